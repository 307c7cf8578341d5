"""Short causal depthwise convolution over time with a carried window (Mamba, Griffin).

    out_t = bias + sum_{j=0..K-1} w_j * u_{t-K+1+j}

The K-1 inputs before the sequence come from the state ("window"), so running a sequence
in pieces equals running it whole, and masked (padding) steps are skipped: every real
token sees the previous K-1 real inputs.
"""

from __future__ import annotations

import torch

from statewise.ops.precision import float32_recurrence


def _window_sum(
    ext: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seq_len: int
) -> torch.Tensor:
    """out_t = bias + sum_j weight[:, j] * ext[:, t + j], t < seq_len; ext is (B, K-1+T, C)."""
    kernel = weight.shape[-1]
    out = ext[:, kernel - 1 : kernel - 1 + seq_len] * weight[:, -1]
    for j in range(kernel - 1):
        out = torch.addcmul(out, ext[:, j : j + seq_len], weight[:, j])
    return out if bias is None else out + bias


@float32_recurrence
def causal_conv1d(
    u: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    window: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise convolution over time with a carried window; returns (out, window).

    u: (B, T, C); weight: (C, K) (``nn.Conv1d(C, C, K, groups=C).weight[:, 0]``);
    bias: (C,) or None; window: (B, K-1, C), the K - 1 inputs before u (None: zeros);
    mask: (B, T) bool or None, True = real step. out_t = bias + sum_j weight[:, j]
    u_{t-K+1+j} (cross-correlation, as nn.Conv1d with K - 1 steps of left padding);
    the returned window holds the last K - 1 real inputs.

    With a mask, every row is first compacted (real steps first, in order, by a stable
    sort), convolved, and the outputs are put back in place; outputs at masked steps are
    those of the compacted positions that the masked steps were sorted to (finite, unused).
    """
    batch, seq_len, channels = u.shape
    kernel = weight.shape[-1]
    if weight.shape != (channels, kernel):
        raise ValueError(f"weight must be (C, K) with C = {channels}, got {tuple(weight.shape)}")
    if window is None:
        window = u.new_zeros(batch, kernel - 1, channels)
    elif window.shape != (batch, kernel - 1, channels):
        raise ValueError(
            f"window must be (B, K-1, C) = {(batch, kernel - 1, channels)}, "
            f"got {tuple(window.shape)}"
        )
    ext = torch.cat([window, u], dim=1)  # (B, K-1+T, C)
    if mask is None:
        out = _window_sum(ext, weight, bias, seq_len)
        return out, ext[:, seq_len:].clone()  # the last K-1 inputs, not a view of ext

    keep = torch.cat([mask.new_ones(batch, kernel - 1), mask], dim=1)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # real steps first
    ext = ext.gather(1, order.unsqueeze(-1).expand(-1, -1, channels))
    out = _window_sum(ext, weight, bias, seq_len)
    # compacted output i belongs to step order[K-1+i] - (K-1) (the window stays in front)
    where = (order[:, kernel - 1 :] - (kernel - 1)).unsqueeze(-1).expand(-1, -1, channels)
    out = torch.zeros_like(out).scatter(1, where, out)
    n_real = keep.sum(dim=1, keepdim=True)  # >= K-1: the window counts as real
    last = n_real - (kernel - 1) + torch.arange(kernel - 1, device=u.device)
    new_window = ext.gather(1, last.unsqueeze(-1).expand(-1, -1, channels))
    return out, new_window
