"""Splitting a step's batch into row slices: the micro-batches of gradient accumulation
(and the one place a future data-parallel shard of rows would be cut).

A batch is a tuple of (B, ...) tensors or None (inputs, targets, resets); a carried state
is a tree of batch-first tensors. Row slices are consecutive, so row r of the carried
state always meets row r of the next batch, whatever the split.
"""

from __future__ import annotations

from typing import Any

import torch

from statewise.ops.tree import tree_map


def row_slices(rows: int, parts: int) -> list[slice]:
    """``parts`` consecutive slices covering rows 0 .. rows-1, sizes differing by at most
    one (the first ``rows % parts`` one larger); ValueError if parts is not in [1, rows]."""
    if not 1 <= parts <= rows:
        raise ValueError(f"cannot split {rows} rows into {parts} non-empty parts")
    size, extra = divmod(rows, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + size + (1 if i < extra else 0)
        out.append(slice(start, stop))
        start = stop
    return out


def take_rows(tree: Any, rows: slice) -> Any:
    """The rows ``rows`` of every tensor of ``tree`` (a state tree, or a tuple holding
    tensors and None); None stays None."""
    if tree is None:
        return None
    if isinstance(tree, tuple) and not hasattr(tree, "_fields"):
        return tuple(take_rows(t, rows) for t in tree)
    return tree_map(lambda t: t[rows], tree)


def cat_rows(trees: list[Any]) -> Any:
    """The inverse of taking consecutive row slices: the trees joined along rows."""
    return tree_map(lambda *ts: torch.cat(ts, dim=0), *trees)
