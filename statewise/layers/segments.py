"""Packed rows cut into their documents: the layer contract's ``resets``, exact in every mode.

A packed row holds several documents back to back; ``resets`` (B, T) is True at the first
token of each document after the first. The contract says the state before such a token is
the initial state. Every layer honours it the same way, whatever its mode: the rows are cut
at their resets into segments, the segments are stacked into one padded batch
(N_segments, L_longest, D) with a mask over the padding, the layer's own forward runs on
that batch (padding carries the state through, so each segment's final state is the state
after its last real token), and the outputs are scattered back into the rows. Each segment
starts from the initial state, except the first segment of a row without a reset at
position 0, which starts from the state the row was given.

This is the varlen batching of flash-attention's ``cu_seqlens``, and it is exact in every
mode by construction: each segment is computed by the very forward that computes a
document alone. Its cost is the padding: N_segments x L_longest positions instead of
B x T. Language-model corpora have documents longer than a training window, so a row holds
one or two segments and the overhead is small; many short documents per row cost more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from statewise.ops.tree import State, carry, tree_map


@dataclass
class Segments:
    """Where each position (b, t) of the packed rows goes in the segment batch."""

    segment: torch.Tensor  # (B, T) index of the position's segment, 0 .. n-1
    offset: torch.Tensor  # (B, T) the position's index within its segment
    row: torch.Tensor  # (n,) the row each segment comes from
    continues: torch.Tensor  # (n,) bool: the segment starts from the row's given state
    last: torch.Tensor  # (B,) each row's last segment
    n: int  # number of segments
    longest: int  # length of the longest segment


def find_segments(resets: torch.Tensor) -> Segments:
    """The segments of packed rows whose documents start where ``resets`` (B, T) is True."""
    batch, seq_len = resets.shape
    device = resets.device
    starts = resets.clone()
    starts[:, 0] = True
    per_row = starts.sum(dim=1)  # segments in each row
    first = torch.cumsum(per_row, 0) - per_row  # global index of each row's first segment
    segment = first[:, None] + torch.cumsum(starts.long(), dim=1) - 1
    positions = torch.arange(seq_len, device=device).expand(batch, seq_len)
    start_of = torch.where(starts, positions, 0).cummax(dim=1).values
    offset = positions - start_of
    n = int(per_row.sum())
    row = torch.repeat_interleave(torch.arange(batch, device=device), per_row)
    continues = torch.zeros(n, dtype=torch.bool, device=device)
    continues[first] = ~resets[:, 0]
    lengths = torch.bincount(segment.flatten(), minlength=n)
    return Segments(segment, offset, row, continues, first + per_row - 1, n, int(lengths.max()))


def forward_in_segments(
    forward: Callable[[torch.Tensor, State, torch.Tensor | None], tuple[torch.Tensor, State]],
    init_state: Callable[[int], State],
    x: torch.Tensor,
    state: State,
    mask: torch.Tensor | None,
    resets: torch.Tensor,
) -> tuple[torch.Tensor, State]:
    """``forward(x_segments, state_segments, mask_segments)`` over the documents of the
    packed rows ``x`` (B, T, D), each from its own start state; returns the rows' outputs
    (B, T, D) and each row's final state (that of its last document)."""
    seg = find_segments(resets)
    stacked = x.new_zeros(seg.n, seg.longest, x.shape[-1])
    stacked[seg.segment, seg.offset] = x
    real = torch.zeros(seg.n, seg.longest, dtype=torch.bool, device=x.device)
    real[seg.segment, seg.offset] = True if mask is None else mask
    start = carry(seg.continues, tree_map(lambda t: t[seg.row], state), init_state(seg.n))
    y, final = forward(stacked, start, None if bool(real.all()) else real)
    return y[seg.segment, seg.offset], tree_map(lambda t: t[seg.last], final)
