"""Multi-query associative recall (Arora et al. 2023, "Zoology"), generated from a seed.

A sequence starts with n_pairs key-value pairs ``k1 v1 k2 v2 ...``; the rest holds random
filler in which every key appears once more as a query. The model must then predict the
value that was bound to that key. Keys come from the lower half of the vocabulary, values
from the upper half (token 0 is never used). The gap between the context and a query
follows a power law p(g) ~ g^(alpha - 1), so most queries come early and a few come late.

    inputs : k1 v1 k2 v2 k3 v3  f  f  k2 v2  f  k1 v1  f ...
    targets:  .  .  .  .  .  .  .  .  v2  .  .  v1  .  . ...   (. = ignored)
"""

from __future__ import annotations

import torch

from statewise.errors import DataError
from statewise.tasks.base import IGNORE, Batch, step_generator

VAL_SEED_OFFSET = 7_919  # validation examples come from a seed stream the training never uses


class MQAR:
    metric = "accuracy"

    def __init__(
        self,
        seq_len: int = 64,
        vocab_size: int = 128,
        n_pairs: int = 4,
        alpha: float = 0.1,
        seed: int = 0,
    ) -> None:
        if vocab_size < 8:
            raise DataError(f"data.vocab_size must be >= 8 for mqar, got {vocab_size}")
        self.n_keys = vocab_size // 2 - 1
        if not 1 <= n_pairs <= self.n_keys:
            raise DataError(
                f"data.n_pairs must be in [1, {self.n_keys}] for vocab_size {vocab_size}"
            )
        if seq_len < 4 * n_pairs:
            raise DataError(
                f"data.seq_len must be >= 4 * n_pairs = {4 * n_pairs} to fit the pairs and "
                f"the queries, got {seq_len}"
            )
        if alpha <= 0:
            raise DataError(f"data.alpha must be > 0, got {alpha}")
        self.seq_len, self.vocab_size, self.n_pairs = seq_len, vocab_size, n_pairs
        self.alpha, self.seed = alpha, seed

    def train_batch(self, step: int, batch_size: int) -> Batch:
        return self.sample(batch_size, step_generator(self.seed, step))

    def eval_batches(self, batch_size: int, n_batches: int) -> list[Batch]:
        g = step_generator(self.seed + VAL_SEED_OFFSET, 0)
        return [self.sample(batch_size, g) for _ in range(n_batches)]

    def sample(self, batch_size: int, g: torch.Generator) -> Batch:
        n, half = self.n_pairs, self.vocab_size // 2
        # one sequence of seq_len + 1 tokens gives inputs [:-1] and next-token targets [1:]
        length = self.seq_len + 1
        seq = torch.randint(1, self.vocab_size, (batch_size, length), generator=g)
        keys = torch.rand(batch_size, self.n_keys, generator=g).argsort(dim=1)[:, :n] + 1
        values = torch.randint(half, self.vocab_size, (batch_size, n), generator=g)
        seq[:, 0 : 2 * n : 2], seq[:, 1 : 2 * n : 2] = keys, values
        # queries occupy slot pairs (key, value) after the context; slot j starts at 2n + 2j
        n_slots = (length - 2 * n) // 2
        gaps = torch.arange(1, n_slots + 1, dtype=torch.float64)
        weights = (gaps ** (self.alpha - 1)).expand(batch_size, n_slots)
        slots = torch.multinomial(weights, n, replacement=False, generator=g)
        order = torch.rand(batch_size, n, generator=g).argsort(dim=1)
        query_pos = 2 * n + 2 * slots
        rows = torch.arange(batch_size)[:, None]
        seq[rows, query_pos] = keys.gather(1, order)
        seq[rows, query_pos + 1] = values.gather(1, order)
        targets = torch.full((batch_size, length), IGNORE)
        targets[rows, query_pos + 1] = values.gather(1, order)
        return seq[:, :-1], targets[:, 1:]
