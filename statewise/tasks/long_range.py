"""Long-range tasks: the adding problem (Hochreiter & Schmidhuber 1997, "Long Short-Term
Memory", experiment 4, in the form of Le et al. 2015) and passkey retrieval in long filler
(Mohtashami & Jaggi 2023, "Landmark Attention").

Both are language-model tasks over tokens with the answer as the only targets; seq_len is the
input width T. ``test_batches(batch_size, n_batches, length)`` draws them at width ``length``.
"""

from __future__ import annotations

import torch

from statewise.errors import DataError
from statewise.tasks.base import IGNORE, Batch
from statewise.tasks.copying import GeneratedTask


class Adding(GeneratedTask):
    """The adding problem, quantised: sum the two marked numbers of a long sequence.

    Quantisation: every number is one of n_levels values x = k / (n_levels - 1), k in
    0 .. n_levels-1, drawn uniformly (the original draws x uniformly from [0, 1]; this is that
    distribution rounded to a grid). A number is one token, its level k, and a marked number
    is a token of its own (level k + n_levels) instead of a second input channel. The sum
    (k1 + k2) / (n_levels - 1) is then exact on a grid of 2 n_levels - 1 values, and the answer
    token is 2 n_levels + 1 + (k1 + k2): no rounding in the target. One mark lies in the first
    half of the numbers, the other in the second half. Token 2 n_levels is the query ``=``.
    With n_levels = 10 (x in 0, 1/9, ..., 1), marked numbers in brackets:

        inputs :  3 [7]  0  9  5 [2]  8  =
        targets:  -  -   -  -  -  -   -  sum(7, 2) = 9, i.e. x = 1.0      (- = ignored)
    """

    def __init__(self, seq_len: int = 128, n_levels: int = 10, seed: int = 0) -> None:
        if n_levels < 2:
            raise DataError(f"data.n_levels must be >= 2 for adding, got {n_levels}")
        self.seq_len, self.n_levels, self.seed = seq_len, n_levels, seed
        self.query = 2 * n_levels
        self.answer0 = self.query + 1
        self.vocab_size = self.answer0 + 2 * n_levels - 1
        self.check_length(seq_len)

    def check_length(self, length: int) -> None:
        if length < 3:
            raise DataError(
                f"data.seq_len (and a test length) must be >= 3 for adding, got {length}"
            )

    def sample(self, batch_size: int, g: torch.Generator, length: int) -> Batch:
        n, q = length - 1, self.n_levels  # n numbers, then the query
        levels = torch.randint(0, q, (batch_size, n), generator=g)
        half = n // 2
        first = torch.randint(0, half, (batch_size,), generator=g)
        second = torch.randint(half, n, (batch_size,), generator=g)
        rows = torch.arange(batch_size)
        answer = levels[rows, first] + levels[rows, second]
        inputs = levels.clone()
        inputs[rows, first] += q
        inputs[rows, second] += q
        inputs = torch.cat([inputs, torch.full((batch_size, 1), self.query)], dim=1)
        targets = torch.full_like(inputs, IGNORE)
        targets[:, -1] = self.answer0 + answer
        return inputs, targets


class Passkey(GeneratedTask):
    """Passkey retrieval: a key of n_digits digits hidden at a random place in filler.

    Tokens: 0 is the key marker ``K``, 1 the question ``?``, 2 .. 11 the digits, 12 .. 19 a
    fixed filler "sentence" of 8 tokens repeated (starting at a random phase) like the
    "The grass is green. The sky is blue." of the original. The marker precedes the key; at
    the end the question asks for it and the model answers digit by digit. With n_digits = 3:

        inputs :  f f f K 4 0 7 f f f f ? 4 0
        targets:  - - - - - - - - - - - 4 0 7      (- = ignored)
    """

    KEY, ASK, DIGIT0, FILLER0, N_FILLER = 0, 1, 2, 12, 8

    def __init__(self, seq_len: int = 128, n_digits: int = 5, seed: int = 0) -> None:
        if n_digits < 1:
            raise DataError(f"data.n_digits must be >= 1 for passkey, got {n_digits}")
        self.seq_len, self.n_digits, self.seed = seq_len, n_digits, seed
        self.vocab_size = self.FILLER0 + self.N_FILLER
        self.check_length(seq_len)

    def check_length(self, length: int) -> None:
        if length < 2 * self.n_digits + 2:
            raise DataError(
                f"data.seq_len (and a test length) must be >= 2 * n_digits + 2 = "
                f"{2 * self.n_digits + 2} for passkey, got {length}"
            )

    def sample(self, batch_size: int, g: torch.Generator, length: int) -> Batch:
        d = self.n_digits
        n_filler = length - 1 - 2 * d  # the sequence is length + 1 tokens: inputs and targets
        key = torch.randint(0, 10, (batch_size, d), generator=g) + self.DIGIT0
        phase = torch.randint(0, self.N_FILLER, (batch_size, 1), generator=g)
        where = torch.randint(0, n_filler + 1, (batch_size,), generator=g)
        seq = (phase + torch.arange(length + 1)) % self.N_FILLER + self.FILLER0
        tail = torch.cat([torch.full((batch_size, 1), self.ASK), key], dim=1)
        seq[:, -(d + 1) :] = tail
        for row, at in enumerate(where.tolist()):  # splice the key into the filler
            seq[row, at] = self.KEY
            seq[row, at + 1 : at + 1 + d] = key[row]
        targets = torch.full_like(seq, IGNORE)
        targets[:, -d:] = key
        return seq[:, :-1], targets[:, 1:]
