"""ListOps (Nangia & Bowman 2018, "ListOps: A Diagnostic Dataset for Latent Tree Learning"),
generated from a seed, as a sequence-classification dataset.

An expression is a digit 0-9 or a bracketed operator over 2..max_args sub-expressions:

    [MAX 2 9 [MIN 4 7 ] 0 ]  ->  9

    MAX, MIN   the largest / smallest argument
    MED        the median, floored: sorted(a)[n // 2] for odd n, (a[n/2 - 1] + a[n/2]) // 2
               for even n (as ``int(np.median(a))`` in the Long Range Arena generator)
    SM         SUM_MOD: sum(a) % 10

The label (0-9) is the value of the whole expression, whose outermost node is always an
operator. Tokens: 0 = <pad>, 1..10 = digits 0..9, 11..14 = "[MAX" "[MIN" "[MED" "[SM",
15 = "]". The published benchmark (LRA) uses depth 10 and up to 2,000 tokens; the defaults
here (depth 4, at most 64 tokens) are small enough to train on a CPU.

    data = listops(n_train=2000, n_val=200, n_test=200, seed=0)
    x, y, lengths = data["train"].x, data["train"].y, data["train"].lengths
"""

from __future__ import annotations

import random

import numpy as np

from statewise.errors import DataError
from statewise.tasks.labelled import LabelledSplit

PAD = 0
OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
VOCAB = ("<pad>", *(str(d) for d in range(10)), *OPERATORS, "]")
TOKEN_ID = {token: i for i, token in enumerate(VOCAB)}
N_CLASSES = 10

Tree = int | tuple  # a digit, or (operator, [sub-trees])
ListOpsSplit = LabelledSplit  # x (N, max_length) ids, y (N,) labels 0-9, lengths (N,)


def apply(op: str, args: list[int]) -> int:
    """The value of operator ``op`` (one of OPERATORS) over digits ``args``."""
    if op == "[MAX":
        return max(args)
    if op == "[MIN":
        return min(args)
    if op == "[MED":
        s, n = sorted(args), len(args)
        return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) // 2
    if op == "[SM":
        return sum(args) % 10
    raise ValueError(f"unknown operator {op!r}")


def value(tree: Tree) -> int:
    if isinstance(tree, int):
        return tree
    op, args = tree
    return apply(op, [value(a) for a in args])


def tokens(tree: Tree) -> list[str]:
    if isinstance(tree, int):
        return [str(tree)]
    op, args = tree
    return [op, *(t for a in args for t in tokens(a)), "]"]


def random_tree(
    rng: random.Random, max_depth: int, max_args: int, p_operator: float = 0.25
) -> Tree:
    """An operator at the root; below it, each argument is an operator with probability
    ``p_operator`` while the depth allows, else a digit."""

    def grow(depth: int, root: bool) -> Tree:
        if root or (depth < max_depth and rng.random() < p_operator):
            n = rng.randint(2, max_args)
            return (rng.choice(OPERATORS), [grow(depth + 1, False) for _ in range(n)])
        return rng.randint(0, 9)

    return grow(1, True)


def encode(token_list: list[str]) -> list[int]:
    return [TOKEN_ID[t] for t in token_list]


def decode(ids) -> list[str]:
    """Token ids (padding dropped) -> token strings."""
    return [VOCAB[int(i)] for i in ids if int(i) != PAD]


def listops(
    n_train: int = 2000,
    n_val: int = 200,
    n_test: int = 200,
    *,
    seed: int = 0,
    max_depth: int = 4,
    max_args: int = 5,
    max_length: int = 64,
    p_operator: float = 0.25,
    min_length: int = 1,
) -> dict[str, ListOpsSplit]:
    """Train/val/test splits of distinct expressions (no expression appears twice, within or
    across splits) of depth <= max_depth and min_length .. max_length tokens (shorter and
    longer draws are rejected, as the LRA generator does); the same arguments give the same
    arrays."""
    for name, v, low in (
        ("n_train", n_train, 0),
        ("n_val", n_val, 0),
        ("n_test", n_test, 0),
        ("max_depth", max_depth, 1),
        ("max_args", max_args, 2),
        ("max_length", max_length, 4),
        ("min_length", min_length, 1),
    ):
        if not isinstance(v, int) or v < low:
            raise DataError(f"{name} must be an int >= {low}, got {v!r}")
    if not 0.0 <= p_operator < 1.0:
        raise DataError(f"p_operator must be in [0, 1), got {p_operator!r}")
    if min_length > max_length:
        raise DataError(f"min_length {min_length} is larger than max_length {max_length}")
    rng = random.Random(seed)
    seen: set[tuple[str, ...]] = set()
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    out: dict[str, ListOpsSplit] = {}
    for split, n in sizes.items():
        rows, labels, attempts = [], [], 0
        while len(rows) < n:
            attempts += 1
            if attempts > 100 * n + 10_000:
                raise DataError(
                    f"could not draw {n} distinct expressions for {split!r}: "
                    "raise max_length / max_depth / max_args, lower min_length or ask for fewer"
                )
            tree = random_tree(rng, max_depth, min(max_args, max_length - 2), p_operator)
            toks = tuple(tokens(tree))
            if not min_length <= len(toks) <= max_length or toks in seen:
                continue
            seen.add(toks)
            rows.append(encode(list(toks)))
            labels.append(value(tree))
        x = np.full((n, max_length), PAD, dtype=np.int64)
        for i, row in enumerate(rows):
            x[i, : len(row)] = row
        out[split] = ListOpsSplit(
            x=x,
            y=np.array(labels, dtype=np.int64),
            lengths=np.array([len(r) for r in rows], dtype=np.int64),
        )
    return out
