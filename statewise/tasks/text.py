"""Language modelling over documents: text files, directories, globs, JSON Lines, a prepared
token directory, or the built-in corpus, tokenized by bytes or a subword tokenizer.

The built-in corpus is the Python standard library's own top-level source files, which
every Python installation ships (the way char-rnn was shown learning the Linux source),
one document per file.

Two task names share this code: ``char_lm`` is byte-level (the tokenizer must be bytes)
and reports bits per character (per byte); ``lm`` takes any tokenizer (data.tokenizer)
and reports the loss per token, since bits per token of a subword vocabulary are not
bits per character.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from statewise.errors import ConfigError, DataError
from statewise.tasks.base import Batch, step_generator
from statewise.tasks.documents import Document, builtin_files, iter_documents
from statewise.tasks.encoding import encode_in_memory
from statewise.tasks.packing import TokenStream, split_documents
from statewise.tasks.prepared import is_prepared, open_prepared
from statewise.tasks.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer, same_tokenizer

TEXT_TASKS = ("char_lm", "lm")


def builtin_corpus() -> str:
    """The concatenated top-level ``*.py`` files of this Python's standard library (~4.7 MB)."""
    return "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in builtin_files())


def read_text(path: str) -> str:
    """The text of file ``path``; a clear error if it is missing, a directory, or empty."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data.path {str(p)!r} is not a readable file")
    text = p.read_text(encoding="utf-8", errors="replace")
    if not text:
        raise DataError(f"data.path {str(p)!r} is empty")
    return text


class TextLM:
    """Next-token prediction over documents packed end to end, with resets at document
    starts.

    ``tokens`` (any integer array, a memory map included) holds the documents
    ``offsets[i] : offsets[i + 1]``; they are split into train and validation documents by
    the seed (statewise.tasks.packing.split_documents) into the streams ``train_part`` and
    ``val_part``. Batches are (inputs, targets,
    resets), each (B, seq_len); resets is True where an input token is a document's first.

    - ``train_batch(step, B)``: windows at random positions of the training stream, drawn
      from a generator seeded by (seed, step): the batch of a step is the same however
      often training stops and resumes.
    - ``stream_batch(step, B)``: truncated BPTT (AWD-LSTM, Transformer-XL): the training
      stream is cut into B contiguous streams; row r at step s reads window
      s mod n_windows of stream r, so a state carried from step to step belongs to the text
      just before. At each new pass (s mod n_windows == 0) resets[:, 0] is True.
    - ``eval_batches(B, n)``: fixed windows, evenly spaced over the validation stream.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        offsets: np.ndarray,
        seq_len: int,
        val_fraction: float = 0.1,
        seed: int = 0,
        tokenizer: Tokenizer | None = None,
        metric: str = "bits_per_char",
    ) -> None:
        if len(offsets) < 2 or offsets[-1] <= offsets[0]:
            raise DataError("the text holds no token")
        self.tokenizer = tokenizer or ByteTokenizer()
        self.vocab_size = self.tokenizer.vocab_size
        self.metric, self.seq_len, self.seed = metric, seq_len, seed
        self.n_documents = len(offsets) - 1
        self._val_bytes_per_token: float | None = None
        self.train_part, self.val_part = split_documents(tokens, offsets, val_fraction, seed)
        for stream, name in ((self.train_part, "training"), (self.val_part, "validation")):
            if stream.length < seq_len + 2:
                raise DataError(
                    f"the text is too short: its {name} part has {stream.length} tokens, "
                    f"fewer than data.seq_len + 2 = {seq_len + 2} (lower data.seq_len, or "
                    "change data.val_fraction)"
                )

    def train_batch(self, step: int, batch_size: int) -> Batch:
        g = step_generator(self.seed, step)
        last = self.train_part.length - self.seq_len - 1
        starts = torch.randint(0, last, (batch_size,), generator=g)
        return self._windows(self.train_part, starts)

    def n_windows(self, batch_size: int) -> int:
        """Windows per stream in ``stream_batch``: a pass over the training stream."""
        per_stream = self.train_part.length // batch_size
        return (per_stream - 1) // self.seq_len

    def stream_batch(self, step: int, batch_size: int) -> Batch:
        n_windows = self.n_windows(batch_size)
        if n_windows < 1:
            raise DataError(
                f"the training text ({self.train_part.length} tokens) is too short to cut "
                f"into train.batch_size = {batch_size} streams of data.seq_len + 1 = "
                f"{self.seq_len + 1} tokens for state passing"
            )
        per_stream = self.train_part.length // batch_size
        window = step % n_windows
        starts = torch.arange(batch_size) * per_stream + window * self.seq_len
        inputs, targets, resets = self._windows(self.train_part, starts)
        if window == 0:  # a new pass: a carried state belongs to the end of the stream
            resets[:, 0] = True
        return inputs, targets, resets

    def val_stream(self) -> torch.Tensor:
        """Every validation token in order, as one 1-D int64 tensor (its documents joined;
        dynamic evaluation reads it so)."""
        return self.val_part.gather(torch.arange(self.val_part.length))[0]

    def val_bytes_per_token(self) -> float:
        """UTF-8 bytes per token of the validation documents (1 for the byte tokenizer):
        a loss per token divided by it is a loss per byte, comparable across tokenizers."""
        if self._val_bytes_per_token is None:
            text = self.tokenizer.decode(self.val_stream().tolist())
            self._val_bytes_per_token = len(text.encode("utf-8")) / self.val_part.length
        return self._val_bytes_per_token

    def eval_batches(self, batch_size: int, n_batches: int) -> list[Batch]:
        last = self.val_part.length - self.seq_len - 1
        starts = torch.linspace(0, last, batch_size * n_batches).long().unique()
        return [self._windows(self.val_part, s) for s in starts.split(batch_size)]

    def _windows(self, stream: TokenStream, starts: torch.Tensor) -> Batch:
        ids, resets = stream.gather(starts[:, None] + torch.arange(self.seq_len + 1))
        return ids[:, :-1], ids[:, 1:], resets[:, :-1].clone()


class CharLM(TextLM):
    """Byte-level language modelling of one text held in memory (the API of statewise 0.1):
    one document, so the validation part is its last ``val_fraction`` of bytes, and its
    train and eval batches are (inputs, targets) without resets (a single document starts
    only at byte 0). ``stream_batch`` still returns resets."""

    def __init__(self, text: str, seq_len: int, val_fraction: float = 0.1, seed: int = 0):
        tokens, offsets = encode_in_memory([Document(text, "text", 0)], ByteTokenizer())
        super().__init__(tokens, offsets, seq_len, val_fraction, seed)

    def train_batch(self, step: int, batch_size: int) -> Batch:
        return super().train_batch(step, batch_size)[:2]

    def eval_batches(self, batch_size: int, n_batches: int) -> list[Batch]:
        return [b[:2] for b in super().eval_batches(batch_size, n_batches)]


def build_text_task(
    task: str,
    path: str,
    seq_len: int,
    val_fraction: float,
    seed: int,
    tokenizer: str | Tokenizer = "",
    text_field: str = "text",
) -> TextLM:
    """The text task of data.task ``task`` over data.path ``path`` (a prepared directory is
    memory-mapped; anything else is read and tokenized in memory) with ``tokenizer`` (a
    tokenizer, or data.tokenizer's spec: "" is bytes). A prepared directory's own tokenizer
    is used; a different ``tokenizer`` is a ConfigError."""
    wanted = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    named = not isinstance(tokenizer, str) or tokenizer not in ("", "bytes")
    if path and is_prepared(path):
        prepared = open_prepared(path)
        tok = prepared.tokenizer()
        if named and not same_tokenizer(tok, wanted):
            raise ConfigError(
                f"data.path {path!r} was prepared with tokenizer {tok.identity()}, not "
                f"data.tokenizer's {wanted.identity()}; prepare it again or leave "
                "data.tokenizer empty (a prepared directory carries its tokenizer)"
            )
        tokens, offsets = prepared.tokens, prepared.offsets
    else:
        tok = wanted
        tokens, offsets = encode_in_memory(iter_documents(path, text_field), tok)
        if len(offsets) < 2:
            raise DataError(f"data.path {path!r} is empty: it holds no text")
    byte_level = isinstance(tok, ByteTokenizer)
    if task == "char_lm" and not byte_level:
        raise ConfigError(
            'data.task "char_lm" is byte-level; for a subword tokenizer set data.task = "lm"'
        )
    metric = "bits_per_char" if byte_level else "loss"
    return TextLM(tokens, offsets, seq_len, val_fraction, seed, tok, metric)
