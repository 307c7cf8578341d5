"""Copying tasks: selective copying (Gu & Dao 2023, "Mamba") and induction heads
(Olsson et al. 2022; the synthetic form of Fu et al. 2023, "Hungry Hungry Hippos").

Both are language-model tasks: the inputs are tokens (B, T), the targets the next tokens,
IGNORE everywhere except where an answer is due. Training batches come from
``step_generator(seed, step)``, validation from a separate seed stream, and
``test_batches(batch_size, n_batches, length)`` draws the same task at another width T
(length generalisation: train at seq_len = L, test up to 64 L).

This module also holds ``GeneratedTask``, the seed plumbing the other synthetic tasks
(state_tracking, long_range) share.
"""

from __future__ import annotations

import torch

from statewise.errors import DataError
from statewise.tasks.base import IGNORE, Batch, step_generator

VAL_SEED_OFFSET = 7_919  # validation: a seed stream the training never uses
TEST_SEED_OFFSET = 104_729  # length-generalisation test: yet another stream


class GeneratedTask:
    """Shared plumbing: a subclass sets seq_len, seed, vocab_size and defines ``sample``."""

    metric = "accuracy"
    seq_len: int
    seed: int
    vocab_size: int

    def sample(self, batch_size: int, g: torch.Generator, length: int) -> Batch:
        raise NotImplementedError

    def check_length(self, length: int) -> None:
        """Raise ValueError if ``length`` is not a width this task can generate."""

    def train_batch(self, step: int, batch_size: int) -> Batch:
        return self.sample(batch_size, step_generator(self.seed, step), self.seq_len)

    def eval_batches(self, batch_size: int, n_batches: int) -> list[Batch]:
        g = step_generator(self.seed + VAL_SEED_OFFSET, 0)
        return [self.sample(batch_size, g, self.seq_len) for _ in range(n_batches)]

    def test_batches(self, batch_size: int, n_batches: int, length: int) -> list[Batch]:
        """Batches at another ``length`` (the input width T, or for state tracking the
        number of symbols), from a seed stream of their own."""
        self.check_length(length)
        g = step_generator(self.seed + TEST_SEED_OFFSET, length)
        return [self.sample(batch_size, g, length) for _ in range(n_batches)]


def _random_positions(batch_size: int, span: int, n: int, g: torch.Generator) -> torch.Tensor:
    """n distinct sorted positions in [0, span) per row, (batch_size, n)."""
    return torch.rand(batch_size, span, generator=g).argsort(dim=1)[:, :n].sort(dim=1).values


class SelectiveCopy(GeneratedTask):
    """Selective copying: n_copy data tokens scattered among blanks, then recalled in order.

    Token 0 is the blank, 1 the marker ``|``, data tokens are 2 .. vocab_size-1. The
    context holds seq_len - n_copy positions; n_copy markers follow it, and at the i-th
    marker the target is the i-th data token. The answers are not fed back: as in the
    Mamba paper's task (the copying data of the S4 code base, ``variable=True``), the
    layer has to keep the order of the data tokens itself, not look up "the token that
    followed the one just copied". With n_copy = 3 and seq_len = 10:

        inputs :  .  a  .  .  b  .  c  |  |  |
        targets:  -  -  -  -  -  -  -  a  b  c      (. = blank, - = ignored)
    """

    BLANK, MARKER, FIRST = 0, 1, 2

    def __init__(
        self, seq_len: int = 128, vocab_size: int = 16, n_copy: int = 16, seed: int = 0
    ) -> None:
        if vocab_size < 3:
            raise DataError(f"data.vocab_size must be >= 3 for selective_copy, got {vocab_size}")
        if n_copy < 1:
            raise DataError(f"data.n_copy must be >= 1, got {n_copy}")
        self.seq_len, self.vocab_size, self.n_copy, self.seed = seq_len, vocab_size, n_copy, seed
        self.check_length(seq_len)

    def check_length(self, length: int) -> None:
        if length < 2 * self.n_copy:
            raise DataError(
                f"data.seq_len (and a test length) must be >= 2 * n_copy = {2 * self.n_copy} "
                f"for selective_copy, got {length}"
            )

    def sample(self, batch_size: int, g: torch.Generator, length: int) -> Batch:
        n, context = self.n_copy, length - self.n_copy
        data = torch.randint(self.FIRST, self.vocab_size, (batch_size, n), generator=g)
        inputs = torch.full((batch_size, length), self.BLANK)
        rows = torch.arange(batch_size)[:, None]
        inputs[rows, _random_positions(batch_size, context, n, g)] = data
        inputs[:, context:] = self.MARKER
        targets = torch.full_like(inputs, IGNORE)
        targets[:, context:] = data
        return inputs, targets


class InductionHeads(GeneratedTask):
    """Induction heads: recall the token that followed the trigger the last time it was seen.

    Token 1 is the trigger ``>``; the rest are random tokens from 2 .. vocab_size-1 (token 0
    is never used). The trigger occurs once in the body, followed by the answer, and once
    more as the last input, where the target is that answer. With seq_len = 8:

        inputs :  c  a  >  d  b  a  c  >
        targets:  -  -  -  -  -  -  -  d      (- = ignored)
    """

    TRIGGER, FIRST = 1, 2

    def __init__(self, seq_len: int = 128, vocab_size: int = 16, seed: int = 0) -> None:
        if vocab_size < 3:
            raise DataError(f"data.vocab_size must be >= 3 for induction_heads, got {vocab_size}")
        self.seq_len, self.vocab_size, self.seed = seq_len, vocab_size, seed
        self.check_length(seq_len)

    def check_length(self, length: int) -> None:
        if length < 3:
            raise DataError(
                f"data.seq_len (and a test length) must be >= 3 for induction_heads, got {length}"
            )

    def sample(self, batch_size: int, g: torch.Generator, length: int) -> Batch:
        seq = torch.randint(self.FIRST, self.vocab_size, (batch_size, length + 1), generator=g)
        rows = torch.arange(batch_size)
        # the first trigger sits anywhere before the final one, leaving room for its answer
        first = torch.randint(0, length - 2, (batch_size,), generator=g)
        seq[rows, first] = self.TRIGGER
        seq[:, length - 1] = self.TRIGGER
        answer = seq[rows, first + 1]
        seq[:, length] = answer
        targets = torch.full_like(seq, IGNORE)
        targets[:, length] = answer
        return seq[:, :-1], targets[:, 1:]
