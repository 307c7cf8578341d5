"""Numba kernel of Mamba's selective scan, fused: no (B, T, D, N) tensor is ever made.

The twin is :func:`statewise.ops.selective_scan.selective_scan` (its torch path). Per batch
element b, channel d and state index n (x, dt: (B, T, D); A: (D, N); B, C: (B, T, N)):

    e_t[d, n] = exp(dt_t[d] A[d, n]),   a_t = e_t   (or 2 e_t - 1 with negative eigenvalues)
    h_t[d, n] = a_t[d, n] h_{t-1}[d, n] + dt_t[d] x_t[d] B_t[n]
    y_t[d]    = sum_n C_t[n] h_t[d, n]                 (the skip term D x is added outside)

Forward: a task is one batch element and a block of channels; it keeps its (block, N) state
in the output ``h_last`` and writes y_t as it goes. When gradients are needed it also stores
the state entering every :data:`CHECKPOINT` steps, (B, T / CHECKPOINT, D, N).

Backward, from gy_t = dL/dy_t and the gradient of the final state, per chunk of CHECKPOINT
steps from the last: rebuild h and e of the chunk from its stored entering state (scratch of
the chunk's size), then run backwards in time with G_t the total gradient of h_t:

    G_t = gy_t[d] C_t[n] + a_{t+1} G_{t+1}          (starting from dL/dh_T)
    dL/dC_t[n] = sum_d gy_t[d] h_t[d, n]      dL/dB_t[n] = sum_d G_t[d, n] dt_t[d] x_t[d]
    s_t[d] = sum_n G_t[d, n] B_t[n]           dL/dx_t[d] = s_t[d] dt_t[d]
    r_t[d, n] = G_t[d, n] h_{t-1}[d, n] e_t[d, n]  (times 2 with negative eigenvalues)
    dL/ddt_t[d] = sum_n r_t[d, n] A[d, n] + s_t[d] x_t[d]
    dL/dA[d, n] = sum_{b, t} r_t[d, n] dt_t[d]      dL/dh0 = a_1 G_1 (the carry at the end)

Sums over d (for B, C) are kept per channel block and over b (for A) per batch element, so
tasks never write the same memory; the caller adds the partial sums.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from statewise.kernels.scan import run_parallel

DTYPES = (torch.float32, torch.float64)
CHECKPOINT = 64  # steps between stored states (the backward recomputes within a chunk)
D_BLOCK = 64  # channels per task: the chunk scratch (2 x CHECKPOINT x D_BLOCK x N) fits L2


@numba.njit(cache=True, parallel=True, nogil=True)
def _forward_kernel(x, dt, A, Bt, Ct, h_last, y, checkpoints, negative, one, d_block):
    batch, seq_len, width = x.shape
    n_state = A.shape[1]
    n_d = (width + d_block - 1) // d_block
    save = checkpoints.shape[1] > 0
    for task in numba.prange(batch * n_d):
        bi = task // n_d
        d0 = task % n_d * d_block
        d1 = min(width, d0 + d_block)
        h = h_last[bi]  # holds h0 on entry, the running state after
        for t in range(seq_len):
            if save and t % CHECKPOINT == 0:
                checkpoints[bi, t // CHECKPOINT, d0:d1] = h[d0:d1]
            for d in range(d0, d1):
                dtv = dt[bi, t, d]
                u = dtv * x[bi, t, d]
                acc = one - one
                for n in range(n_state):
                    e = np.exp(dtv * A[d, n])
                    if negative:
                        e = e + e - one
                    hv = e * h[d, n] + u * Bt[bi, t, n]
                    h[d, n] = hv
                    acc += Ct[bi, t, n] * hv
                y[bi, t, d] = acc


@numba.njit(cache=True, parallel=True, nogil=True)
def _backward_kernel(
    x,
    dt,
    A,
    Bt,
    Ct,
    checkpoints,
    grad_y,
    carry,
    negative,
    one,
    d_block,
    grad_x,
    grad_dt,
    grad_A,
    grad_B,
    grad_C,
):
    """carry: dL/dh_T on entry, dL/dh0 on exit. grad_A (B, D, N) per batch element and
    grad_B, grad_C (n_blocks, B, T, N) per channel block, zeroed by the caller."""
    batch, seq_len, width = x.shape
    n_state = A.shape[1]
    n_d = (width + d_block - 1) // d_block
    n_chunks = (seq_len + CHECKPOINT - 1) // CHECKPOINT
    for task in numba.prange(batch * n_d):
        bi = task // n_d
        blk = task % n_d
        d0 = blk * d_block
        d1 = min(width, d0 + d_block)
        hs = np.empty((CHECKPOINT + 1, d1 - d0, n_state), dtype=x.dtype)  # h_{t-1}, h_t, ...
        es = np.empty((CHECKPOINT, d1 - d0, n_state), dtype=x.dtype)
        g = carry[bi]
        for c in range(n_chunks - 1, -1, -1):
            t0 = c * CHECKPOINT
            steps = min(seq_len, t0 + CHECKPOINT) - t0
            hs[0] = checkpoints[bi, c, d0:d1]
            for s in range(steps):  # rebuild the chunk
                t = t0 + s
                for d in range(d0, d1):
                    dtv = dt[bi, t, d]
                    u = dtv * x[bi, t, d]
                    for n in range(n_state):
                        e = np.exp(dtv * A[d, n])
                        es[s, d - d0, n] = e
                        a = e + e - one if negative else e
                        hs[s + 1, d - d0, n] = a * hs[s, d - d0, n] + u * Bt[bi, t, n]
            for s in range(steps - 1, -1, -1):  # and run it backwards
                t = t0 + s
                for d in range(d0, d1):
                    dl = d - d0
                    dtv = dt[bi, t, d]
                    xv = x[bi, t, d]
                    u = dtv * xv
                    gy = grad_y[bi, t, d]
                    s_d = one - one
                    r_sum = one - one
                    for n in range(n_state):
                        G = gy * Ct[bi, t, n] + g[d, n]
                        e = es[s, dl, n]
                        grad_C[blk, bi, t, n] += gy * hs[s + 1, dl, n]
                        grad_B[blk, bi, t, n] += G * u
                        s_d += G * Bt[bi, t, n]
                        r = G * hs[s, dl, n] * e
                        if negative:
                            r = r + r
                            g[d, n] = (e + e - one) * G
                        else:
                            g[d, n] = e * G
                        r_sum += r * A[d, n]
                        grad_A[bi, d, n] += r * dtv
                    grad_x[bi, t, d] = s_d * dtv
                    grad_dt[bi, t, d] = r_sum + s_d * xv


def supported(*tensors: torch.Tensor) -> bool:
    """True when the kernel takes these tensors: all on CPU, one dtype, float32 or float64."""
    dtype = tensors[0].dtype
    return dtype in DTYPES and all(t.device.type == "cpu" and t.dtype == dtype for t in tensors)


def _args(*tensors: torch.Tensor) -> list[np.ndarray]:
    return [t.contiguous().numpy() for t in tensors]


def forward(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor,
    negative_eigenvalues: bool,
    save: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y without the skip term (B, T, D), h_T (B, D, N), checkpoints (B, T/64, D, N)).

    The checkpoints (the state entering every :data:`CHECKPOINT` steps) are made only when
    ``save`` (for the backward); else an empty tensor.
    """
    batch, seq_len, width = x.shape
    n_chunks = math.ceil(seq_len / CHECKPOINT) if save else 0
    h_last = h0.clone(memory_format=torch.contiguous_format)
    y = x.new_empty(batch, seq_len, width)
    checkpoints = x.new_empty(batch, n_chunks, width, A.shape[1])
    one = np.dtype(str(x.dtype).removeprefix("torch.")).type(1)
    arrays = _args(x, dt, A, B, C, h_last, y, checkpoints)
    run_parallel(_forward_kernel, h0.numel() * seq_len, *arrays, negative_eigenvalues, one, D_BLOCK)
    return y, h_last, checkpoints


def backward(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    checkpoints: torch.Tensor,
    grad_y: torch.Tensor,
    grad_last: torch.Tensor,
    negative_eigenvalues: bool,
) -> tuple[torch.Tensor, ...]:
    """Gradients of (x, dt, A, B, C, h0) from dL/dy (B, T, D) and dL/dh_T (B, D, N)."""
    batch, seq_len, width = x.shape
    n_blocks = math.ceil(width / D_BLOCK)
    carry = grad_last.clone(memory_format=torch.contiguous_format)  # becomes dL/dh0
    grad_x, grad_dt = torch.empty_like(x), torch.empty_like(x)
    grad_A = x.new_zeros((batch,) + A.shape)
    grad_B = x.new_zeros(n_blocks, *B.shape)
    grad_C = x.new_zeros(n_blocks, *C.shape)
    one = np.dtype(str(x.dtype).removeprefix("torch.")).type(1)
    arrays = _args(x, dt, A, B, C, checkpoints, grad_y, carry)
    outputs = _args(grad_x, grad_dt, grad_A, grad_B, grad_C)
    run_parallel(
        _backward_kernel,
        carry.numel() * seq_len,
        *arrays,
        negative_eigenvalues,
        one,
        D_BLOCK,
        *outputs,
    )
    return grad_x, grad_dt, grad_A.sum(0), grad_B.sum(0), grad_C.sum(0), carry
