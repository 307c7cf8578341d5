"""Byte-level BPE (Sennrich et al. 2016 over GPT-2's byte alphabet), trained and run by the
Hugging Face ``tokenizers`` library (the optional extra ``statewise[text]``).

Byte-level means the 256 byte values are the base alphabet, so every text encodes, with
no unknown token, and ``decode(encode(text)) == text`` exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from statewise.errors import ArgumentError, DataError
from statewise.tasks.documents import iter_documents
from statewise.tasks.tokenizer import HF_FILE, _write_meta, require_tokenizers

MIN_VOCAB = 256  # the byte alphabet; each token above it is one learnt merge
MAX_VOCAB = 1 << 20


class BPETokenizer:
    """A Hugging Face tokenizer (``tokenizer.json``) behind statewise's tokenizer interface."""

    def __init__(self, json_text: str, origin: str = "tokenizer.json") -> None:
        tokenizers = require_tokenizers()
        try:
            self._tok = tokenizers.Tokenizer.from_str(json_text)
        except Exception as err:  # tokenizers raises its own exception types
            raise DataError(f"{origin} is not a usable tokenizer.json: {err}") from None
        self._json = json_text
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``encode`` of each text, in parallel threads of the tokenizers library."""
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def stream_decoder(self) -> _BPEStream:
        return _BPEStream(self._tok)

    def identity(self) -> dict[str, Any]:
        digest = hashlib.sha256(self._json.encode("utf-8")).hexdigest()
        return {"kind": "bpe", "vocab_size": self.vocab_size, "sha256": digest}

    def save(self, directory: Path) -> None:
        (Path(directory) / HF_FILE).write_text(self._json, encoding="utf-8")
        _write_meta(Path(directory), self.identity())


class _BPEStream:
    """Incremental decoding (tokenizers' DecodeStream): a token that ends inside a UTF-8
    character yields "" until the character completes."""

    def __init__(self, tok: Any) -> None:
        from tokenizers.decoders import DecodeStream

        self._tok, self._stream = tok, DecodeStream(skip_special_tokens=False)

    def step(self, token: int) -> str:
        return self._stream.step(self._tok, int(token)) or ""

    def flush(self) -> str:
        return ""


def train_bpe(
    sources: Iterable[str],
    vocab_size: int,
    text_field: str = "text",
    progress: bool = False,
) -> BPETokenizer:
    """A byte-level BPE of at most ``vocab_size`` tokens learnt from the documents of
    ``sources`` (each a file, directory, glob or JSON Lines, as data.path), read one at a
    time. No special tokens: documents are separated by resets, not by a token."""
    tokenizers = require_tokenizers()
    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise ArgumentError(
            f"--vocab-size must be in [{MIN_VOCAB}, {MAX_VOCAB}] (the 256 bytes are the "
            f"base alphabet), got {vocab_size}"
        )
    sources = [str(s) for s in sources]
    if not sources:
        raise ArgumentError("name at least one source to train the tokenizer on")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=progress,
    )

    def texts() -> Iterable[str]:
        for source in sources:
            for doc in iter_documents(source, text_field, name="source"):
                yield doc.text

    tok.train_from_iterator(texts(), trainer=trainer)
    return BPETokenizer(tok.to_str())
