"""How often an MQAR query's key reappears in the filler between its binding and the query.

Zoology's MQAR fills the non-query positions with random tokens from the whole vocabulary,
so a key can reappear in the filler followed by some other token before it is queried. A
memory that keeps the *latest* binding of each key (what a decaying recurrent state does
unless it learns to write only inside the context) then answers wrongly. Two ceilings:

- latest binding: the key's latest occurrence before the query is followed by a token
  other than the answer;
- latest value-range binding: as above, counting only occurrences followed by a token from
  the value half of the vocabulary (a memory that learned which tokens are values).

Attention can attend to the first occurrence and is not bound by either.

    python benchmarks/mqar_ceiling.py            # length 64 / 4 pairs and 128 / 8 pairs
"""

from __future__ import annotations

import torch

from statewise.tasks.base import IGNORE
from statewise.tasks.mqar import MQAR


def ceilings(seq_len: int, n_pairs: int, vocab: int = 128, n: int = 4096) -> tuple[float, float]:
    task = MQAR(seq_len, vocab, n_pairs, seed=0)
    inputs, targets = task.sample(n, torch.Generator().manual_seed(1))
    half = vocab // 2
    queries = wrong_latest = wrong_value = 0
    for row_in, row_tg in zip(inputs.tolist(), targets.tolist()):
        for pos, answer in enumerate(row_tg):
            if answer == IGNORE:
                continue
            key = row_in[pos]
            earlier = [i for i in range(pos) if row_in[i] == key]
            queries += 1
            wrong_latest += row_in[earlier[-1] + 1] != answer
            values = [i for i in earlier if row_in[i + 1] >= half]
            wrong_value += row_in[values[-1] + 1] != answer
    return 1 - wrong_latest / queries, 1 - wrong_value / queries


def main() -> None:
    print("| length | pairs | latest-binding ceiling | latest value-binding ceiling |")
    print("|---|---|---|---|")
    for seq_len, n_pairs in ((64, 4), (128, 8)):
        latest, value = ceilings(seq_len, n_pairs)
        print(f"| {seq_len} | {n_pairs} | {latest:.3f} | {value:.3f} |")


if __name__ == "__main__":
    main()
