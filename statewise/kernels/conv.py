"""numba kernels of the short causal depthwise convolution (:mod:`statewise.ops.conv`).

On the extended input ext = [window, u], (B, K-1+T, C), and weights w (C, K):

    out[b, t, c]    = bias[c] + sum_j w[c, j] ext[b, t + j, c]                 t < T
    grad_ext[b, s, c] = sum_{j: 0 <= s - j < T} w[c, j] grad_out[b, s - j, c]
    grad_w[c, j]    = sum_{b, t} grad_out[b, t, c] ext[b, t + j, c]
    grad_bias[c]    = sum_{b, t} grad_out[b, t, c]

The PyTorch twin (``ops.conv._window_sum``) runs K passes over (B, T, C), each reading and
writing the whole tensor; here each output is made in one pass over time with the K taps
in registers, so the forward reads ext and writes out once. Parallel over (batch row, block of
time steps); per-task partial sums of grad_w and grad_bias are added at the end.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from statewise.kernels.scan import run_parallel

DTYPES = (torch.float32, torch.float64)
TIME_BLOCK = 256  # time steps per task: tasks for every thread even at batch 1


@numba.njit(cache=True, parallel=True, nogil=True)
def _forward_kernel(ext, w_t, bias, out, has_bias, zero):
    batch, seq_len, channels = out.shape
    kernel = w_t.shape[0]
    n_blocks = (seq_len + TIME_BLOCK - 1) // TIME_BLOCK
    for task in numba.prange(batch * n_blocks):
        b, t0 = task // n_blocks, (task % n_blocks) * TIME_BLOCK
        for t in range(t0, min(t0 + TIME_BLOCK, seq_len)):
            row = out[b, t]  # 1-d rows: the channel loops vectorise
            for c in range(channels):
                row[c] = bias[c] if has_bias else zero
            for j in range(kernel):
                tap, x = w_t[j], ext[b, t + j]
                for c in range(channels):
                    row[c] += tap[c] * x[c]


@numba.njit(cache=True, parallel=True, nogil=True)
def _backward_kernel(ext, w_t, grad_out, grad_ext, grad_w_tasks, grad_bias_tasks, zero):
    batch, seq_len, channels = grad_out.shape
    kernel = w_t.shape[0]
    n_blocks = (seq_len + TIME_BLOCK - 1) // TIME_BLOCK
    for task in numba.prange(batch * n_blocks):
        b, t0 = task // n_blocks, (task % n_blocks) * TIME_BLOCK
        t1 = min(t0 + TIME_BLOCK, seq_len)
        # grad_ext rows s in [t0, t1) (and the last K - 1 rows with the last block)
        s1 = t1 if t1 < seq_len else seq_len + kernel - 1
        for s in range(t0, s1):
            row = grad_ext[b, s]
            for c in range(channels):
                row[c] = zero
            for j in range(kernel):
                t = s - j
                if 0 <= t < seq_len:
                    tap, g = w_t[j], grad_out[b, t]
                    for c in range(channels):
                        row[c] += tap[c] * g[c]
        grad_bias = grad_bias_tasks[task]
        for t in range(t0, t1):
            g = grad_out[b, t]
            for c in range(channels):
                grad_bias[c] += g[c]
            for j in range(kernel):
                grad_w, x = grad_w_tasks[task, j], ext[b, t + j]
                for c in range(channels):
                    grad_w[c] += g[c] * x[c]


def _zero(x: torch.Tensor):
    """0 in the numpy scalar type of x (the accumulators' start)."""
    return np.dtype(str(x.dtype).removeprefix("torch.")).type(0)


def supported(*tensors: torch.Tensor) -> bool:
    """True when the kernels take these tensors: all on CPU, one dtype, float32 or float64."""
    dtype = tensors[0].dtype
    return dtype in DTYPES and all(t.device.type == "cpu" and t.dtype == dtype for t in tensors)


def forward(ext: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """out (B, T, C) from ext (B, K-1+T, C), weight (C, K), bias (C,) or None."""
    kernel = weight.shape[1]
    batch, width, channels = ext.shape
    out = ext.new_empty(batch, width - kernel + 1, channels)
    b = weight.new_zeros(1) if bias is None else bias.detach().contiguous()
    w_t = weight.detach().t().contiguous()  # (K, C): each tap's weights contiguous
    args = (ext.detach().contiguous().numpy(), w_t.numpy(), b.numpy())
    run_parallel(_forward_kernel, out.numel(), *args, out.numpy(), bias is not None, _zero(ext))
    return out


def backward(
    ext: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_ext, grad_weight, grad_bias) of :func:`forward` at ext, weight."""
    batch, _, channels = ext.shape
    grad_ext = torch.empty_like(ext)
    tasks = batch * -(-grad_out.shape[1] // TIME_BLOCK)
    rows_w = ext.new_zeros(tasks, weight.shape[1], channels)
    rows_b = ext.new_zeros(tasks, channels)
    run_parallel(
        _backward_kernel,
        grad_ext.numel(),
        ext.contiguous().numpy(),
        weight.t().contiguous().numpy(),
        grad_out.contiguous().numpy(),
        grad_ext.numpy(),
        rows_w.numpy(),
        rows_b.numpy(),
        _zero(ext),
    )
    return grad_ext, rows_w.sum(0).t().contiguous(), rows_b.sum(0)
