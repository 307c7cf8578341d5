"""Prepared token files: a corpus tokenized once (``statewise data prepare``), then trained
on through a memory map, so a corpus larger than memory never has to fit in it.

A prepared directory holds::

    header.json      {"format": "statewise-tokens", "version": 1, "dtype": "uint16",
                      "n_tokens": ..., "n_documents": ..., "vocab_size": ...,
                      "tokenizer": {identity}, "source": ..., "text_field": ...}
    tokens.bin       every document's tokens, concatenated: little-endian uint16 when the
                     vocabulary has at most 65,536 tokens, else uint32
    documents.bin    little-endian int64 offsets into tokens.bin: the start of each
                     document, then n_tokens (n_documents + 1 values)
    tokenizer/       the tokenizer the tokens came from (statewise.tasks.tokenizer)

The directory is written as a hidden sibling and renamed into place when complete.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from statewise.errors import DataError
from statewise.tasks.atomic import new_directory
from statewise.tasks.documents import iter_documents, source_files
from statewise.tasks.encoding import encoded_documents, token_dtype
from statewise.tasks.tokenizer import RUN_TOKENIZER, Tokenizer, load_tokenizer

FORMAT = "statewise-tokens"
VERSION = 1
HEADER, TOKENS, DOCUMENTS = "header.json", "tokens.bin", "documents.bin"
WRITE_BUFFER = 1 << 22  # tokens gathered before a write to tokens.bin


def is_prepared(path: str | Path) -> bool:
    """Whether ``path`` is a prepared directory (it holds a header.json of this format)."""
    header = Path(path) / HEADER
    if not header.is_file():
        return False
    try:
        return json.loads(header.read_text(encoding="utf-8")).get("format") == FORMAT
    except (ValueError, AttributeError):
        return False


@dataclass
class Prepared:
    """An open prepared directory: ``tokens`` is a read-only memory map (nothing is read
    until used), ``offsets`` the n_documents + 1 document starts."""

    path: Path
    header: dict[str, Any]
    tokens: np.ndarray
    offsets: np.ndarray

    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.path / RUN_TOKENIZER)


def open_prepared(path: str | Path) -> Prepared:
    """Open prepared directory ``path``, checking its files against its header."""
    path = Path(path)
    try:
        header = json.loads((path / HEADER).read_text(encoding="utf-8"))
        version, dtype = header["version"], np.dtype(header["dtype"])
        n_tokens, n_docs = int(header["n_tokens"]), int(header["n_documents"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: {HEADER} cannot be read ({err})") from None
    if version != VERSION:
        raise DataError(
            f"{path}: prepared format version {version}; this statewise reads {VERSION}"
        )
    for name, size in ((TOKENS, n_tokens * dtype.itemsize), (DOCUMENTS, (n_docs + 1) * 8)):
        actual = (path / name).stat().st_size if (path / name).is_file() else None
        if actual != size:
            raise DataError(
                f"{path}: {name} has {actual} bytes, its header says {size} (an incomplete copy?)"
            )
    tokens = np.memmap(path / TOKENS, dtype=dtype.newbyteorder("<"), mode="r", shape=(n_tokens,))
    offsets = np.fromfile(path / DOCUMENTS, dtype="<i8")
    if offsets[0] != 0 or offsets[-1] != n_tokens or np.any(np.diff(offsets) <= 0):
        raise DataError(f"{path}: {DOCUMENTS} does not hold increasing document offsets")
    return Prepared(path, header, tokens, offsets)


def prepare(
    source: str | Path,
    out: str | Path,
    tokenizer: Tokenizer | None = None,
    text_field: str = "text",
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize the documents of ``source`` (as data.path: a file, directory, glob, JSON
    Lines, or "" for the built-in corpus) into prepared directory ``out``, one document at a
    time; returns the header. ``out`` must be absent or empty; on any failure it is left
    as it was (the files are built in a hidden sibling)."""
    tokenizer = tokenizer or load_tokenizer(None)
    dtype = token_dtype(tokenizer.vocab_size).newbyteorder("<")
    total = sum(p.stat().st_size for p in source_files(source, "source"))
    started = time.perf_counter()
    with new_directory(out) as tmp:
        n_tokens, n_docs = _write_tokens(source, tokenizer, text_field, tmp, dtype, total, progress)
        (tmp / RUN_TOKENIZER).mkdir()
        tokenizer.save(tmp / RUN_TOKENIZER)
        header = {
            "format": FORMAT,
            "version": VERSION,
            "dtype": dtype.name,
            "n_tokens": n_tokens,
            "n_documents": n_docs,
            "vocab_size": tokenizer.vocab_size,
            "tokenizer": tokenizer.identity(),
            "source": str(source) if str(source) else "built-in corpus",
            "text_field": text_field,
            "seconds": round(time.perf_counter() - started, 2),
        }
        (tmp / HEADER).write_text(json.dumps(header, indent=1) + "\n", encoding="utf-8")
    return header


def _write_tokens(
    source: str | Path,
    tokenizer: Tokenizer,
    text_field: str,
    tmp: Path,
    dtype: np.dtype,
    total: int,
    progress: bool,
) -> tuple[int, int]:
    """Write tokens.bin and documents.bin into ``tmp``, buffering WRITE_BUFFER tokens;
    returns (n_tokens, n_documents)."""
    n_tokens, n_docs, buffered, pending, starts = 0, 0, 0, [], [0]
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", disable=not progress)
    with open(tmp / TOKENS, "wb") as f, open(tmp / DOCUMENTS, "wb") as d, bar:

        def flush() -> None:
            if pending:
                f.write(np.concatenate(pending).astype(dtype).tobytes())
            d.write(np.asarray(starts, dtype="<i8").tobytes())
            pending.clear()
            starts.clear()

        docs = iter_documents(source, text_field, name="source")
        for doc, ids in encoded_documents(docs, tokenizer):
            bar.update(doc.source_bytes)
            if not len(ids):
                continue
            pending.append(ids)
            buffered += len(ids) + 4  # an offset weighs about 4 uint16 tokens
            n_tokens += len(ids)
            n_docs += 1
            starts.append(n_tokens)
            if buffered >= WRITE_BUFFER:
                flush()
                buffered = 0
        flush()
    if n_tokens == 0:
        raise DataError(f"source {str(source)!r} holds no text")
    return n_tokens, n_docs
