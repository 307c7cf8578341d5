"""Tokenizers: bytes (the default: any text works and nothing downloads) or a byte-level
BPE trained by ``statewise tokenizer train`` (statewise.tasks.bpe).

Every tokenizer offers ``encode(text) -> list[int]``, ``decode(ids) -> str``,
``vocab_size``, ``stream_decoder()`` (an object whose ``step(token_id)`` returns the text
that token completes, for streaming output, and ``flush()`` the rest), ``identity()``
(what it is, as JSON: its kind, vocabulary size and, for BPE, the SHA-256 of its file) and
``save(directory)``.

A tokenizer directory holds ``statewise-tokenizer.json`` (the identity) and, for BPE, the
Hugging Face ``tokenizer.json``. ``load_tokenizer`` reads one, or a bare ``tokenizer.json``
made with the ``tokenizers`` library directly.
"""

from __future__ import annotations

import encodings.utf_8
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from statewise.errors import ConfigError, DataError
from statewise.tasks.atomic import new_directory

META = "statewise-tokenizer.json"
HF_FILE = "tokenizer.json"
RUN_TOKENIZER = "tokenizer"  # the run directory's copy: DIR/tokenizer/


class StreamDecoder(Protocol):
    def step(self, token: int) -> str: ...

    def flush(self) -> str: ...


class Tokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def stream_decoder(self) -> StreamDecoder: ...

    def identity(self) -> dict[str, Any]: ...

    def save(self, directory: Path) -> None: ...


class ByteStreamDecoder(encodings.utf_8.IncrementalDecoder):
    """UTF-8 decoding one byte token at a time: ``step`` returns "" until a character is
    complete (it is also a codecs incremental decoder: ``decode(b"...")``)."""

    def __init__(self) -> None:
        super().__init__(errors="replace")

    def step(self, token: int) -> str:
        return self.decode(bytes([int(token)]))

    def flush(self) -> str:
        """An incomplete character left at the end decodes to U+FFFD."""
        return self.decode(b"", final=True)


class ByteTokenizer:
    """Token i is the byte i; vocab_size is 256."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        """Bytes that are not valid UTF-8 decode to U+FFFD instead of failing."""
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> ByteStreamDecoder:
        """A decoder fed one token at a time that emits text as soon as characters complete."""
        return ByteStreamDecoder()

    def identity(self) -> dict[str, Any]:
        return {"kind": "bytes", "vocab_size": self.vocab_size}

    def save(self, directory: Path) -> None:
        _write_meta(Path(directory), self.identity())


def _write_meta(directory: Path, identity: dict[str, Any]) -> None:
    (directory / META).write_text(json.dumps({"format": 1, **identity}, indent=1) + "\n")


def load_tokenizer(spec: str | Path | None) -> Tokenizer:
    """The tokenizer ``spec`` names: ``None``, ``""`` or ``"bytes"`` is the byte tokenizer;
    otherwise a tokenizer directory or a Hugging Face ``tokenizer.json`` file."""
    if spec is None or str(spec) in ("", "bytes"):
        return ByteTokenizer()
    path = Path(spec)
    if path.is_dir():
        meta_path = path / META
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                kind = meta["kind"]
            except (ValueError, KeyError, TypeError) as err:
                raise DataError(f"tokenizer {str(path)!r}: {META} cannot be read ({err})") from None
            if kind == "bytes":
                return ByteTokenizer()
            if kind != "bpe":
                raise DataError(f"tokenizer {str(path)!r}: unknown kind {kind!r} in {META}")
        path = path / HF_FILE
    if not path.is_file():
        raise DataError(
            f"tokenizer {str(spec)!r} is not a tokenizer directory (from statewise tokenizer "
            f"train) or a {HF_FILE} file"
        )
    from statewise.tasks.bpe import BPETokenizer

    return BPETokenizer(path.read_text(encoding="utf-8"), origin=str(path))


def require_tokenizers() -> Any:
    """The Hugging Face ``tokenizers`` module, or a ConfigError saying how to install it."""
    try:
        import tokenizers
    except ImportError:
        raise ConfigError(
            "subword tokenizers need the Hugging Face tokenizers library: "
            "pip install 'statewise[text]'"
        ) from None
    return tokenizers


def same_tokenizer(a: Tokenizer, b: Tokenizer) -> bool:
    return a.identity() == b.identity()


def install_tokenizer(tokenizer: Tokenizer, target: str | Path) -> None:
    """Save ``tokenizer`` as directory ``target`` atomically (a hidden sibling renamed into
    place). If ``target`` already holds the same tokenizer nothing is written; another
    tokenizer there is a ConfigError (a run keeps the tokenizer it started with)."""
    target = Path(target)
    if target.exists():
        present = load_tokenizer(target)
        if not same_tokenizer(present, tokenizer):
            raise ConfigError(
                f"{target} holds another tokenizer ({present.identity()}) than this run's "
                f"({tokenizer.identity()}); resume with the tokenizer the run started with"
            )
        return
    with new_directory(target, "the tokenizer directory") as tmp:
        tokenizer.save(tmp)


def run_directory(checkpoint_path: str | Path) -> Path:
    """The run directory of a checkpoint directory (``DIR/checkpoints/step-N`` -> ``DIR``;
    a run directory of the flat layout is its own)."""
    path = Path(checkpoint_path)
    return path.parent.parent if path.parent.name == "checkpoints" else path


def checkpoint_tokenizer(checkpoint_path: str | Path, configured: str = "") -> Tokenizer:
    """The tokenizer a checkpoint was trained with: the run directory's copy
    (``DIR/tokenizer/``) when there is one, otherwise ``configured`` (data.tokenizer of its
    config; runs from before tokenizers were copied)."""
    copy = run_directory(checkpoint_path) / RUN_TOKENIZER
    return load_tokenizer(copy if copy.is_dir() else configured)


def check_vocabulary(model_vocab: int, tokenizer: Tokenizer, what: str) -> None:
    """ConfigError unless a model with ``model_vocab`` output tokens covers every token
    of ``tokenizer``."""
    if model_vocab < tokenizer.vocab_size:
        raise ConfigError(
            f"{what}: model.vocab_size {model_vocab} is smaller than the tokenizer's "
            f"vocabulary {tokenizer.vocab_size} ({tokenizer.identity()['kind']}); set "
            f"model.vocab_size >= {tokenizer.vocab_size}"
        )


def install_run_tokenizer(tokenizer: Tokenizer, run_dir: str | Path) -> None:
    """Copy a subword ``tokenizer`` into ``run_dir/tokenizer/`` (see install_tokenizer),
    so that the run directory moves as one directory; the byte tokenizer is code, not a
    file, and is not copied."""
    if not isinstance(tokenizer, ByteTokenizer):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        install_tokenizer(tokenizer, Path(run_dir) / RUN_TOKENIZER)
