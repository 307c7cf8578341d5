"""Labelled sequence datasets (ListOps, digits) and their language-model form.

A dataset is a dict of ``LabelledSplit`` ("train", "val", "test"). ``AnswerAtEnd`` turns it
into a task ``statewise train`` can fit with the LM head, in the layout of the
state-tracking tasks: the sequence, then a query token, whose target is the label's answer
token (the only position with a loss). With V = the dataset's vocabulary (token 0 = padding):

    inputs :  x_1 .. x_n  =  _  _        (= is token V, _ = padding 0)
    targets:   -  ..  -   a  -  -        (a = V + 1 + label, - = ignored)

so the model's vocabulary is V + 1 + n_classes. Every batch has the dataset's width T (the
longest sequence it allows) plus one, as the state-tracking tasks pad to train_max_len + 1;
rows are right-padded, and the models are causal, so padding cannot change an answer.
Training rows are drawn with replacement from ``step_generator(seed, step)`` (a resumed run
sees the same batches); validation reads the val split in order; ``test_batches`` reads the
test split in order, optionally padded to a larger width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from statewise.errors import ArgumentTypeError, DataError
from statewise.tasks.base import IGNORE, Batch, step_generator

PAD = 0


@dataclass
class LabelledSplit:
    """x (N, T) int64 token ids right-padded with 0 (or float values), y (N,) labels,
    lengths (N,) the real positions per row."""

    x: np.ndarray
    y: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


class AnswerAtEnd:
    """A token-sequence classification dataset as a language-model task (see module doc)."""

    metric = "accuracy"

    def __init__(
        self, splits: dict[str, LabelledSplit], data_vocab: int, n_classes: int, seed: int
    ) -> None:
        for name in ("train", "val", "test"):
            split = splits[name]
            if not np.issubdtype(split.x.dtype, np.integer):
                raise ArgumentTypeError(f"{name}.x must hold token ids, got dtype {split.x.dtype}")
            if len(split) and (split.x.min() < 0 or split.x.max() >= data_vocab):
                raise DataError(f"{name}.x token ids must lie in [0, {data_vocab})")
            if len(split) and (split.y.min() < 0 or split.y.max() >= n_classes):
                raise DataError(f"{name}.y labels must lie in [0, {n_classes})")
        if len(splits["train"]) == 0:
            raise DataError("the train split is empty")
        self.splits, self.seed = splits, seed
        self.seq_len = splits["train"].x.shape[1] + 1
        self.query = data_vocab
        self.answer0 = data_vocab + 1
        self.vocab_size = data_vocab + 1 + n_classes

    def pack(self, split: LabelledSplit, rows: np.ndarray, width: int | None = None) -> Batch:
        """The rows of ``split`` as (inputs, targets) of ``width`` (default T + 1) columns."""
        lengths = torch.from_numpy(split.lengths[rows])
        data_width = split.x.shape[1]
        width = self.seq_len if width is None else width
        if width < data_width + 1:
            raise DataError(f"the width must be >= {data_width + 1} for this data, got {width}")
        inputs = torch.full((len(rows), width), PAD, dtype=torch.long)
        inputs[:, :data_width] = torch.from_numpy(split.x[rows])
        targets = torch.full_like(inputs, IGNORE)
        index = torch.arange(len(rows))
        inputs[index, lengths] = self.query
        targets[index, lengths] = self.answer0 + torch.from_numpy(split.y[rows])
        return inputs, targets

    def train_batch(self, step: int, batch_size: int) -> Batch:
        n = len(self.splits["train"])
        rows = torch.randint(0, n, (batch_size,), generator=step_generator(self.seed, step))
        return self.pack(self.splits["train"], rows.numpy())

    def eval_batches(self, batch_size: int, n_batches: int) -> list[Batch]:
        """The first n_batches * batch_size rows of the val split (all of it if fewer)."""
        return self._in_order("val", batch_size, n_batches)

    def test_batches(
        self, batch_size: int, n_batches: int | None = None, length: int | None = None
    ) -> list[Batch]:
        """The test split in order (the first n_batches batches, or all of it), ``length``
        columns wide (default T + 1)."""
        return self._in_order("test", batch_size, n_batches, length)

    def _in_order(
        self, name: str, batch_size: int, n_batches: int | None, width: int | None = None
    ) -> list[Batch]:
        split = self.splits[name]
        n = len(split) if n_batches is None else min(len(split), batch_size * n_batches)
        return [
            self.pack(split, np.arange(i, min(i + batch_size, n)), width)
            for i in range(0, n, batch_size)
        ]
