"""Where text comes from: the documents of a file, a directory, a glob pattern, JSON Lines,
or the built-in corpus, read one at a time so that no source is ever held whole.

A source ``spec`` (``data.path``, ``statewise data prepare SRC``, ``statewise tokenizer
train FILES``) is one of:

- ``""``: the built-in corpus, one document per top-level ``*.py`` file of this Python's
  standard library (what every installation ships; nothing downloads);
- a text file: one document;
- a ``*.jsonl`` file: one document per line, the string in field ``text_field`` of that
  line's JSON object (blank lines are skipped; anything else is a DataError naming the
  file and line);
- a directory: its files, recursively, in sorted path order, each read as above; hidden
  files and folders (``.git``) and binary files (a NUL byte in the first 8 KiB, as git and
  grep decide) are skipped;
- a glob pattern (``data/*.txt``, ``corpus/**/*.md``): the matching files, sorted.

Text is decoded as UTF-8; invalid bytes become U+FFFD instead of failing. An empty
document (an empty file) is skipped: it holds no token to predict.
"""

from __future__ import annotations

import glob
import json
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from statewise.errors import DataError

BINARY_PROBE = 8192  # bytes read to tell a binary file from a text file
GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Document:
    """One document's text, where it came from (``file`` or ``file:line``), and the number
    of source bytes it took (for progress bars)."""

    text: str
    origin: str
    source_bytes: int


def builtin_files() -> list[Path]:
    """The top-level ``*.py`` files of this Python's standard library, sorted."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))
    if not files:
        raise FileNotFoundError(f"no standard-library sources found in {stdlib}")
    return files


def source_files(spec: str | Path, name: str = "data.path") -> list[Path]:
    """The files that ``spec`` names, in the order their documents are read; DataError
    naming ``name`` when there are none."""
    spec = str(spec)
    if not spec:
        return builtin_files()
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        files = [p for p in files if not _is_binary(p)]
        if not files:
            raise DataError(f"{name} {spec!r} is a directory without text files")
        return files
    if any(c in spec for c in GLOB_CHARS):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"{name} {spec!r}: the glob pattern matches no file")
        return files
    raise DataError(
        f"{name} {spec!r} is not a readable file, directory, glob pattern or prepared directory"
    )


def _is_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        return b"\0" in f.read(BINARY_PROBE)


def is_jsonl(path: Path) -> bool:
    return path.suffix.lower() == ".jsonl"


def iter_documents(
    spec: str | Path, text_field: str = "text", name: str = "data.path"
) -> Iterator[Document]:
    """The non-empty documents of ``spec`` one at a time (see the module docstring)."""
    for path in source_files(spec, name):
        if is_jsonl(path):
            yield from _jsonl_documents(path, text_field)
            continue
        data = path.read_bytes()
        if data:
            yield Document(data.decode("utf-8", errors="replace"), str(path), len(data))


def _jsonl_documents(path: Path, text_field: str) -> Iterator[Document]:
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
                raise DataError(f"{where}: not a JSON object ({err})") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: a JSON {type(record).__name__}, not an object")
            if text_field not in record:
                raise DataError(
                    f"{where}: no field {text_field!r} (data.text_field; the line has "
                    f"{', '.join(map(repr, list(record)[:5])) or 'no fields'})"
                )
            text = record[text_field]
            if not isinstance(text, str):
                raise DataError(
                    f"{where}: field {text_field!r} holds a {type(text).__name__}, not a string"
                )
            if text:
                yield Document(text, where, len(line))
