"""The byte-level tokenizer: UTF-8 bytes are the tokens, so any text works and nothing downloads."""

from __future__ import annotations

import codecs
from collections.abc import Iterable


class ByteTokenizer:
    """Token i is the byte i; vocab_size is 256."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        """Bytes that are not valid UTF-8 decode to U+FFFD instead of failing."""
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> codecs.IncrementalDecoder:
        """A decoder fed one token at a time that emits text as soon as characters complete."""
        return codecs.getincrementaldecoder("utf-8")(errors="replace")
