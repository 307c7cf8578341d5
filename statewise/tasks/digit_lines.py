"""Lines of handwritten digits, read column by column, for CTC and transducer recognisers.

scikit-learn's 1797 digit images (8 x 8, grey levels 0-16; :mod:`statewise.tasks.seq_class`
reads them from the installed wheel) are split into train / val / test images first
(:func:`statewise.tasks.seq_class.split_indices`, from ``split_seed``); then a line is
3-12 images of one split drawn with replacement and placed side by side, with a gap of 0-2
blank columns before each image and after the last. The line is read left to right: one step
per column, 8 features (the column's pixels top to bottom, value / 16). The transcription is
the digits as labels 1..10 (label = digit + 1; 0 is the blank of CTC and of the transducer).
Test lines are built only from test images, so a recogniser never sees a test image in
training.

    lines = digit_lines("train", n=2000, seed=0)
    lines.features[0].shape     # (T_0, 8) float32, T_0 = 8 * digits + gaps
    lines.labels[0]             # [4, 2, 10, ...] = digits + 1

``DigitLinesTask`` serves the lines to ``statewise train`` (a "ctc" or "transducer" model
head).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from statewise.errors import DataError
from statewise.tasks.seq_class import N_LEVELS, SIDE, load_digits_array, split_indices

BLANK = 0
N_LABELS = 11  # blank + 10 digits
MIN_DIGITS, MAX_DIGITS = 3, 12
MAX_GAP = 2
SPLITS = ("train", "val", "test")


@dataclass
class DigitLines:
    """Lines of one split: features[i] (T_i, 8) float32 and labels[i] (list of 1..10)."""

    features: list[np.ndarray]
    labels: list[list[int]]

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, rows: list[int] | range) -> tuple[torch.Tensor, ...]:
        """(x (B, T_max, 8) zero-padded, lengths (B,), labels (B, U_max) zero-padded,
        label_lengths (B,)) for the given rows."""
        rows = list(rows)
        lengths = torch.tensor([len(self.features[r]) for r in rows])
        label_lengths = torch.tensor([len(self.labels[r]) for r in rows])
        x = torch.zeros(len(rows), int(lengths.max()), SIDE)
        y = torch.zeros(len(rows), int(label_lengths.max()), dtype=torch.long)
        for i, r in enumerate(rows):
            x[i, : lengths[i]] = torch.from_numpy(self.features[r])
            y[i, : label_lengths[i]] = torch.tensor(self.labels[r])
        return x, lengths, y, label_lengths


def digit_lines(
    split: str,
    n: int,
    seed: int = 0,
    *,
    split_seed: int = 0,
    min_digits: int = MIN_DIGITS,
    max_digits: int = MAX_DIGITS,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> DigitLines:
    """``n`` lines of ``split``'s images (module docstring), drawn from ``seed``."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    if not 1 <= min_digits <= max_digits:
        raise DataError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
    pixels, digits = load_digits_array()
    rows = split_indices(len(digits), split_seed, val_fraction, test_fraction)[split]
    # each image as its columns: (N, 8 columns, 8 pixels top to bottom)
    images = (pixels[rows] / (N_LEVELS - 1)).astype(np.float32).reshape(-1, SIDE, SIDE)
    columns, labels = images.transpose(0, 2, 1), digits[rows] + 1
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    features, transcripts = [], []
    for _ in range(n):
        picks = rng.integers(0, len(rows), rng.integers(min_digits, max_digits + 1))
        parts = []
        for p in picks:
            parts.append(np.zeros((rng.integers(0, MAX_GAP + 1), SIDE), np.float32))
            parts.append(columns[p])
        parts.append(np.zeros((rng.integers(0, MAX_GAP + 1), SIDE), np.float32))
        features.append(np.concatenate(parts))
        transcripts.append(labels[picks].tolist())
    return DigitLines(features, transcripts)


class DigitLinesTask:
    """Digit lines as ``statewise train`` reads them (model.head "ctc" or "transducer").

    Batches are ``DigitLines.batch``'s (x (B, T, 8), lengths, labels (B, U), label_lengths).
    The images are split by ``seed``; the lines of training step s are drawn from (seed, s),
    validation lines from the validation images, ``test_batches`` of ``length`` digits from
    the test images.
    """

    heads = ("ctc", "transducer")
    metric = "cer"
    vocab_size = 0
    input_dim = SIDE
    n_classes = N_LABELS

    def __init__(
        self,
        seed: int,
        min_digits: int = MIN_DIGITS,
        max_digits: int = MAX_DIGITS,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
    ) -> None:
        self.seed, self.min_digits, self.max_digits = seed, min_digits, max_digits
        self.fractions = dict(val_fraction=val_fraction, test_fraction=test_fraction)

    def _lines(self, split: str, n: int, seed: int, digits: tuple[int, int]) -> DigitLines:
        low, high = digits
        return digit_lines(
            split, n, seed, split_seed=self.seed, min_digits=low, max_digits=high, **self.fractions
        )

    def train_batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, ...]:
        seed = self.seed * 1_000_003 + step
        lines = self._lines("train", batch_size, seed, (self.min_digits, self.max_digits))
        return lines.batch(range(batch_size))

    def eval_batches(self, batch_size: int, n_batches: int) -> list[tuple[torch.Tensor, ...]]:
        n = batch_size * n_batches
        lines = self._lines("val", n, self.seed, (self.min_digits, self.max_digits))
        return _batches(lines, batch_size)

    def test_batches(
        self, batch_size: int, n_batches: int, length: int
    ) -> list[tuple[torch.Tensor, ...]]:
        """Lines of exactly ``length`` test images."""
        n = batch_size * n_batches
        lines = self._lines("test", n, self.seed, (length, length))
        return _batches(lines, batch_size)


def _batches(lines: DigitLines, batch_size: int) -> list[tuple[torch.Tensor, ...]]:
    """``lines`` cut into consecutive batches of ``batch_size``."""
    return [
        lines.batch(range(i, min(i + batch_size, len(lines))))
        for i in range(0, len(lines), batch_size)
    ]
