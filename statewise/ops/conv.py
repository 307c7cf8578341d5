"""Short causal depthwise convolution over time with a carried window (Mamba, Griffin).

    out_t = bias + sum_{j=0..K-1} w_j * u_{t-K+1+j}

The K-1 inputs before the sequence come from the state ("window"), so running a sequence
in pieces equals running it whole, and masked (padding) steps are skipped: every real
token sees the previous K-1 real inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from statewise import kernels
from statewise.ops.precision import float32_recurrence


def _window_sum_grads(
    ext: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dL/dext, dL/dweight, dL/dbias) of :func:`_window_sum` in differentiable torch ops:
    dext[:, t + j] += w[:, j] g_t, dw[:, j] = sum_{b, t} g_t ext[:, t + j], dbias = sum g."""
    kernel, seq_len = weight.shape[-1], grad_out.shape[1]
    grad_ext = torch.stack(
        [F.pad(grad_out * weight[:, j], (0, 0, j, kernel - 1 - j)) for j in range(kernel)]
    ).sum(0)
    grad_weight = torch.stack(
        [(grad_out * ext[:, j : j + seq_len]).sum((0, 1)) for j in range(kernel)], dim=-1
    )
    return grad_ext, grad_weight, grad_out.sum((0, 1))


class _KernelWindowSum(torch.autograd.Function):
    """:func:`_window_sum` by the numba kernels of :mod:`statewise.kernels.conv`. Under
    ``create_graph`` (grad enabled inside the backward) the backward is
    :func:`_window_sum_grads` instead, so double backward works whatever the backend."""

    @staticmethod
    def forward(ctx, ext, weight, bias):
        from statewise.kernels import conv as kernel

        ctx.save_for_backward(ext, weight)
        ctx.has_bias = bias is not None
        return kernel.forward(ext, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        ext, weight = ctx.saved_tensors
        if torch.is_grad_enabled():
            grads = _window_sum_grads(ext, weight, grad_out)
        else:
            from statewise.kernels import conv as kernel

            grads = kernel.backward(ext, weight, grad_out)
        grad_ext, grad_weight, grad_bias = grads
        return grad_ext, grad_weight, grad_bias if ctx.has_bias else None


def _kernel_ready(*tensors: torch.Tensor | None) -> bool:
    """True when the numba backend is in force and its conv kernels take these tensors."""
    if kernels.current() != "numba":
        return False
    from statewise.kernels import conv as kernel

    return kernel.supported(*(t for t in tensors if t is not None))


def _window_sum(ext: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """out_t = bias + sum_j weight[:, j] * ext[:, t + j], t < T; ext is (B, K-1+T, C).
    With the numba backend one pass of :mod:`statewise.kernels.conv`; else K passes."""
    kernel = weight.shape[-1]
    if _kernel_ready(ext, weight, bias):
        return _KernelWindowSum.apply(ext, weight, bias)
    seq_len = ext.shape[1] - (kernel - 1)
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
        out = _window_sum(ext, weight, bias)
        return out, ext[:, seq_len:].clone()  # the last K-1 inputs, not a view of ext

    keep = torch.cat([mask.new_ones(batch, kernel - 1), mask], dim=1)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # real steps first
    ext = ext.gather(1, order.unsqueeze(-1).expand(-1, -1, channels))
    out = _window_sum(ext, weight, bias)
    # compacted output i belongs to step order[K-1+i] - (K-1) (the window stays in front)
    where = (order[:, kernel - 1 :] - (kernel - 1)).unsqueeze(-1).expand(-1, -1, channels)
    out = torch.zeros_like(out).scatter(1, where, out)
    n_real = keep.sum(dim=1, keepdim=True)  # >= K-1: the window counts as real
    last = n_real - (kernel - 1) + torch.arange(kernel - 1, device=u.device)
    new_window = ext.gather(1, last.unsqueeze(-1).expand(-1, -1, channels))
    return out, new_window
