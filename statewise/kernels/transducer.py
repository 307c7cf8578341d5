"""Numba kernels of the RNN transducer loss (Graves 2012): the forward variables alpha, and
the backward variables beta with the gradient w.r.t. the joiner's log-probabilities.

The twin, the equations and the autograd Function are in :mod:`statewise.ops.transducer`;
this module holds only the compiled loops. Per batch row b, with T_b frames, U_b labels,
blank(t, u) = logp[b, t, u, blank] and y(t, u) = logp[b, t, u, labels[b, u]]:

    alpha(0, 0) = 0
    alpha(t, u) = logaddexp(alpha(t-1, u) + blank(t-1, u), alpha(t, u-1) + y(t, u-1))
    log P(y|x)  = alpha(T_b, U_b)          (the exit: the final blank from (T_b-1, U_b))

    beta(T_b, U_b) = 0
    beta(t, u)  = logaddexp(beta(t+1, u) + blank(t, u), beta(t, u+1) + y(t, u))

where a label move needs t < T_b and u < U_b. A blank from the last frame at u < U_b
enters an exit cell (T_b, u) that leads nowhere (beta = -inf there), so only paths that end
with the blank from (T_b-1, U_b) count. The gradient of the loss -log P is minus the
posterior of each move:

    dL/dblank(t, u) = -exp(alpha(t, u) + blank(t, u) + beta(t+1, u) - log P)
    dL/dy(t, u)     = -exp(alpha(t, u) + y(t, u) + beta(t, u+1) - log P)

One task per batch row, rows in parallel with ``prange``: a row's arithmetic is the same
whatever the other rows are, so a loss does not depend on the batch it is computed in. The
loops are scalar (each cell needs its left and upper neighbour), in the input's dtype.

This module imports numba; :mod:`statewise.ops.transducer` imports it only when the numba
backend is in force.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from statewise.kernels.scan import run_parallel

DTYPES = (torch.float32, torch.float64)


@numba.njit(cache=True, inline="always")
def _logaddexp(a, b):
    """log(exp(a) + exp(b)), exact for a or b = -inf."""
    if a == -np.inf:
        return b
    if b == -np.inf:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


@numba.njit(cache=True, parallel=True, nogil=True)
def _forward_kernel(logp, labels, lengths, label_lengths, blank, alpha, log_likelihood):
    """alpha (B, T+1, U+1) of every row's cells t <= T_b, u <= U_b, and log P per row."""
    for b in numba.prange(logp.shape[0]):
        frames, targets = lengths[b], label_lengths[b]
        lp, a, y = logp[b], alpha[b], labels[b]
        for t in range(frames + 1):
            for u in range(targets + 1):
                if t == 0 and u == 0:
                    a[0, 0] = 0.0
                    continue
                value = -np.inf
                if t > 0:
                    value = a[t - 1, u] + lp[t - 1, u, blank]
                if u > 0 and t < frames:
                    value = _logaddexp(value, a[t, u - 1] + lp[t, u - 1, y[u - 1]])
                a[t, u] = value
        log_likelihood[b] = a[frames, targets]


@numba.njit(cache=True, parallel=True, nogil=True)
def _backward_kernel(
    logp, labels, lengths, label_lengths, blank, alpha, log_likelihood, grad_loss, beta, grad
):
    """beta of every row (into the scratch ``beta``) and grad (B, T, U+1, V, zeroed) =
    grad_loss[b] * dL/dlogp, in one reverse pass over each row's cells."""
    for b in numba.prange(logp.shape[0]):
        frames, targets = lengths[b], label_lengths[b]
        lp, a, be, g, y = logp[b], alpha[b], beta[b], grad[b], labels[b]
        total, scale = log_likelihood[b], grad_loss[b]
        for u in range(targets + 1):
            be[frames, u] = -np.inf
        be[frames, targets] = 0.0
        for t in range(frames - 1, -1, -1):
            for u in range(targets, -1, -1):
                value = lp[t, u, blank] + be[t + 1, u]
                g[t, u, blank] = -scale * math.exp(a[t, u] + value - total)
                if u < targets:
                    move = lp[t, u, y[u]] + be[t, u + 1]
                    g[t, u, y[u]] -= scale * math.exp(a[t, u] + move - total)
                    value = _logaddexp(value, move)
                be[t, u] = value


def supported(logp: torch.Tensor) -> bool:
    """True when the kernel takes these log-probabilities: on the CPU, float32 or float64."""
    return logp.device.type == "cpu" and logp.dtype in DTYPES


def _cells(lengths: torch.Tensor, label_lengths: torch.Tensor) -> int:
    """Lattice cells over the batch (the work, for the thread count)."""
    return int(((lengths + 1) * (label_lengths + 1)).sum())


def forward(
    logp: torch.Tensor,
    labels: torch.Tensor,
    lengths: torch.Tensor,
    label_lengths: torch.Tensor,
    blank: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log P per row (B,), alpha (B, T+1, U+1)); integer tensors int64, logp contiguous."""
    batch, frames, positions, _ = logp.shape
    alpha = logp.new_full((batch, frames + 1, positions), -math.inf)
    log_likelihood = logp.new_empty(batch)
    arrays = (t.numpy() for t in (logp, labels, lengths, label_lengths))
    run_parallel(
        _forward_kernel,
        _cells(lengths, label_lengths),
        *arrays,
        blank,
        alpha.numpy(),
        log_likelihood.numpy(),
    )
    return log_likelihood, alpha


def backward(
    logp: torch.Tensor,
    labels: torch.Tensor,
    lengths: torch.Tensor,
    label_lengths: torch.Tensor,
    blank: int,
    alpha: torch.Tensor,
    log_likelihood: torch.Tensor,
    grad_loss: torch.Tensor,
) -> torch.Tensor:
    """grad_loss[b] * d(-log P_b)/dlogp, shape of logp, from the saved alpha and log P."""
    beta = torch.empty_like(alpha)
    grad = torch.zeros_like(logp)
    arrays = (logp, labels, lengths, label_lengths)
    run_parallel(
        _backward_kernel,
        _cells(lengths, label_lengths),
        *(t.numpy() for t in arrays),
        blank,
        alpha.numpy(),
        log_likelihood.numpy(),
        grad_loss.to(logp.dtype).contiguous().numpy(),
        beta.numpy(),
        grad.numpy(),
    )
    return grad
