"""What every task offers the trainer."""

from __future__ import annotations

from typing import Protocol

import torch

IGNORE = -100  # target value of positions that carry no loss (cross_entropy's ignore_index)

# inputs (B, T) and targets (B, T), int64; text tasks add resets (B, T) bool, True where a
# document starts inside a packed row (the layer contract's ``resets``)
Batch = tuple[torch.Tensor, ...]


def unpack_batch(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(inputs, targets, resets) of a batch; resets is None when the task has none."""
    inputs, targets, *rest = batch
    return inputs, targets, (rest[0] if rest else None)


class Task(Protocol):
    vocab_size: int
    metric: str  # the headline metric eval reports beside the loss

    def train_batch(self, step: int, batch_size: int) -> Batch: ...

    def eval_batches(self, batch_size: int, n_batches: int) -> list[Batch]: ...


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator that depends only on (seed, step): the data of a step survives a resume."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)
