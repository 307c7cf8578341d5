"""Character-level language modelling over a text file, or over the built-in corpus.

The built-in corpus is the Python standard library's own top-level source files, which
every Python installation ships (the way char-rnn was shown learning the Linux source).
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch

from statewise.errors import DataError
from statewise.tasks.base import Batch, step_generator
from statewise.tasks.tokenizer import ByteTokenizer


def builtin_corpus() -> str:
    """The concatenated top-level ``*.py`` files of this Python's standard library (~4.7 MB)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))
    if not files:
        raise FileNotFoundError(f"no standard-library sources found in {stdlib}")
    return "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)


def read_text(path: str | Path) -> str:
    """The text of ``path``; a clear error if it is missing, a directory, or empty."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data.path {str(p)!r} is not a readable file")
    text = p.read_text(encoding="utf-8", errors="replace")
    if not text:
        raise DataError(f"data.path {str(p)!r} is empty")
    return text


class CharLM:
    """Byte-level next-token prediction over a corpus split into train and validation parts.

    Training windows are drawn at random positions from a generator seeded by (seed, step),
    so the batch of a given step is the same however often training is stopped and resumed.
    Validation windows are fixed, evenly spaced over the validation part.
    """

    metric = "bits_per_char"

    def __init__(self, text: str, seq_len: int, val_fraction: float = 0.1, seed: int = 0):
        self.tokenizer = ByteTokenizer()
        self.vocab_size = self.tokenizer.vocab_size
        data = torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)
        n_val = int(len(data) * val_fraction)
        self.train_data, self.val_data = data[: len(data) - n_val], data[len(data) - n_val :]
        for part, name in ((self.train_data, "training"), (self.val_data, "validation")):
            if len(part) < seq_len + 2:
                raise DataError(
                    f"the text is too short: its {name} part has {len(part)} bytes, "
                    f"fewer than data.seq_len + 2 = {seq_len + 2}"
                )
        self.seq_len, self.seed = seq_len, seed

    def train_batch(self, step: int, batch_size: int) -> Batch:
        g = step_generator(self.seed, step)
        last = len(self.train_data) - self.seq_len - 1
        starts = torch.randint(0, last, (batch_size,), generator=g)
        return self._windows(self.train_data, starts)

    def eval_batches(self, batch_size: int, n_batches: int) -> list[Batch]:
        last = len(self.val_data) - self.seq_len - 1
        starts = torch.linspace(0, last, batch_size * n_batches).long().unique()
        return [self._windows(self.val_data, s) for s in starts.split(batch_size)]

    def _windows(self, data: torch.Tensor, starts: torch.Tensor) -> Batch:
        idx = starts[:, None] + torch.arange(self.seq_len + 1)
        chunk = data[idx].long()
        return chunk[:, :-1], chunk[:, 1:]
