"""Numba kernel of Mamba's selective scan, fused: no (B, T, D, N) tensor is ever made.

The twin is :func:`statewise.ops.selective_scan.selective_scan` (its torch path). Per batch
element b, channel d and state index n (x, dt: (B, T, D); A: (D, N); B, C: (B, T, N)):

    e_t[d, n] = exp(dt_t[d] A[d, n]),   a_t = e_t   (or 2 e_t - 1 with negative eigenvalues)
    h_t[d, n] = a_t[d, n] h_{t-1}[d, n] + dt_t[d] x_t[d] B_t[n]
    y_t[d]    = sum_n C_t[n] h_t[d, n]                 (the skip term D x is added outside)

Time runs in chunks of :data:`CHECKPOINT` steps, and within a chunk over blocks of batch
rows. For each (chunk, rows) block torch first makes e = exp(dt A), (rows, CHECKPOINT, D, N)
at most :data:`DECAY_ELEMENTS` elements, and the kernel reads it: torch's exp is vectorised
(Sleef), numba's without SVML is a scalar libm call per element, which cost the kernel
more than its arithmetic (measured below). Tasks are one batch row and a block of channels.

Forward: a task keeps its (block, N) state in the output ``h_last`` and writes y_t as it
goes. When gradients are needed it also stores the state entering every chunk,
(B, T / CHECKPOINT, D, N).

Backward, from gy_t = dL/dy_t and the gradient of the final state, per chunk from the last:
rebuild h of the chunk from its stored entering state (scratch of the chunk's size), then
run backwards in time with G_t the total gradient of h_t:

    G_t = gy_t[d] C_t[n] + a_{t+1} G_{t+1}          (starting from dL/dh_T)
    dL/dC_t[n] = sum_d gy_t[d] h_t[d, n]      dL/dB_t[n] = sum_d G_t[d, n] dt_t[d] x_t[d]
    s_t[d] = sum_n G_t[d, n] B_t[n]           dL/dx_t[d] = s_t[d] dt_t[d]
    r_t[d, n] = G_t[d, n] h_{t-1}[d, n] e_t[d, n]  (times 2 with negative eigenvalues)
    dL/ddt_t[d] = sum_n r_t[d, n] A[d, n] + s_t[d] x_t[d]
    dL/dA[d, n] = sum_{b, t} r_t[d, n] dt_t[d]      dL/dh0 = a_1 G_1 (the carry at the end)

Sums over d (for B, C) are kept per channel block and over b (for A) per batch element, so
tasks never write the same memory; the caller adds the partial sums.

Measured (1 thread, float32, best of 7, the other core busy; forward / backward of the
scan, exp in the kernel -> exp from torch): B 32, T 272, D 128, N 16: 61 / 119 ms -> 37 /
80 ms; B 8, T 512, D 512, N 16: 154 / 255 ms -> 80 / 160 ms; one step (B 1, D 512): 0.05
-> 0.06 ms.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from statewise.kernels.scan import run_parallel

DTYPES = (torch.float32, torch.float64)
CHECKPOINT = 64  # steps between stored states (the backward recomputes within a chunk)
D_BLOCK = 64  # channels per task: the chunk scratch (CHECKPOINT x D_BLOCK x N) fits L2
DECAY_ELEMENTS = 1 << 22  # largest block of exp(dt A) made at once (16 MB in float32)


@numba.njit(cache=True, parallel=True, nogil=True)
def _forward_kernel(x, dt, E, Bt, Ct, h_last, y, checkpoints, b0, t0, negative, one, d_block):
    """Steps t0 .. t0 + E.shape[1] of rows b0 .. b0 + E.shape[0], with E = exp(dt A) there."""
    rows, steps, width, n_state = E.shape
    n_d = (width + d_block - 1) // d_block
    save = checkpoints.shape[1] > 0
    for task in numba.prange(rows * n_d):
        r = task // n_d
        bi = b0 + r
        d0 = task % n_d * d_block
        d1 = min(width, d0 + d_block)
        h = h_last[bi]  # holds h0 on entry, the running state after
        for s in range(steps):
            t = t0 + s
            if save and t % CHECKPOINT == 0:
                checkpoints[bi, t // CHECKPOINT, d0:d1] = h[d0:d1]
            for d in range(d0, d1):
                u = dt[bi, t, d] * x[bi, t, d]
                acc = one - one
                for n in range(n_state):
                    e = E[r, s, d, n]
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
    E,
    A,
    Bt,
    Ct,
    checkpoints,
    grad_y,
    carry,
    b0,
    chunk,
    negative,
    one,
    d_block,
    grad_x,
    grad_dt,
    grad_A,
    grad_B,
    grad_C,
):
    """Chunk ``chunk`` of rows b0 .. b0 + E.shape[0], E = exp(dt A) over it. carry: dL/dh at
    the chunk's end on entry, at its start on exit (dL/dh0 after the first chunk). grad_A
    (B, D, N) per batch element and grad_B, grad_C (n_blocks, B, T, N) per channel block,
    zeroed by the caller."""
    rows, steps, width, n_state = E.shape
    n_d = (width + d_block - 1) // d_block
    t0 = chunk * CHECKPOINT
    for task in numba.prange(rows * n_d):
        r = task // n_d
        bi = b0 + r
        blk = task % n_d
        d0 = blk * d_block
        d1 = min(width, d0 + d_block)
        hs = np.empty((steps + 1, d1 - d0, n_state), dtype=x.dtype)  # h_{t-1}, h_t, ...
        g = carry[bi]
        hs[0] = checkpoints[bi, chunk, d0:d1]
        for s in range(steps):  # rebuild the chunk
            t = t0 + s
            for d in range(d0, d1):
                u = dt[bi, t, d] * x[bi, t, d]
                for n in range(n_state):
                    e = E[r, s, d, n]
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
                    e = E[r, s, d, n]
                    grad_C[blk, bi, t, n] += gy * hs[s + 1, dl, n]
                    grad_B[blk, bi, t, n] += G * u
                    s_d += G * Bt[bi, t, n]
                    rv = G * hs[s, dl, n] * e
                    if negative:
                        rv = rv + rv
                        g[d, n] = (e + e - one) * G
                    else:
                        g[d, n] = e * G
                    r_sum += rv * A[d, n]
                    grad_A[bi, d, n] += rv * dtv
                grad_x[bi, t, d] = s_d * dtv
                grad_dt[bi, t, d] = r_sum + s_d * xv


def supported(*tensors: torch.Tensor) -> bool:
    """True when the kernel takes these tensors: all on CPU, one dtype, float32 or float64."""
    dtype = tensors[0].dtype
    return dtype in DTYPES and all(t.device.type == "cpu" and t.dtype == dtype for t in tensors)


def _args(*tensors: torch.Tensor) -> list[np.ndarray]:
    return [t.contiguous().numpy() for t in tensors]


class _Decays:
    """exp(dt A) by blocks of (rows, steps) = (up to ``rows``, one chunk), in one buffer."""

    def __init__(self, dt: torch.Tensor, A: torch.Tensor) -> None:
        batch, seq_len, width = dt.shape
        steps = min(seq_len, CHECKPOINT)
        self.rows = max(1, min(batch, DECAY_ELEMENTS // max(1, steps * width * A.shape[1])))
        self.dt, self.A = dt, A
        self.buffer = dt.new_empty(self.rows * steps * width * A.shape[1])

    def blocks(self) -> range:
        """The first batch row of each block."""
        return range(0, self.dt.shape[0], self.rows)

    def __call__(self, b0: int, t0: int) -> np.ndarray:
        """exp(dt A) of rows b0 .. b0 + rows and steps t0 .. t0 + CHECKPOINT (clipped)."""
        dt = self.dt[b0 : b0 + self.rows, t0 : t0 + CHECKPOINT]
        shape = (*dt.shape, self.A.shape[1])
        out = self.buffer[: math.prod(shape)].view(shape)
        torch.mul(dt.unsqueeze(-1), self.A, out=out)
        return out.exp_().numpy()


def _one(x: torch.Tensor):
    """1 in the numpy scalar type of x (the kernels' accumulators start from one - one)."""
    return np.dtype(str(x.dtype).removeprefix("torch.")).type(1)


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
    arrays = _args(x, dt)
    tail = _args(B, C, h_last, y, checkpoints)
    decays = _Decays(dt.contiguous(), A.contiguous())
    flags = (negative_eigenvalues, _one(x), D_BLOCK)
    for t0 in range(0, seq_len, CHECKPOINT):
        for b0 in decays.blocks():
            E = decays(b0, t0)
            args = (*arrays, E, *tail, b0, t0, *flags)
            run_parallel(_forward_kernel, E.size, *args)
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
    arrays = _args(x, dt)
    middle = _args(A, B, C, checkpoints, grad_y, carry)
    outputs = _args(grad_x, grad_dt, grad_A, grad_B, grad_C)
    decays = _Decays(dt.contiguous(), A.contiguous())
    flags = (negative_eigenvalues, _one(x), D_BLOCK)
    for chunk in range(math.ceil(seq_len / CHECKPOINT) - 1, -1, -1):
        for b0 in decays.blocks():
            E = decays(b0, chunk * CHECKPOINT)
            args = (*arrays, E, *middle, b0, chunk, *flags, *outputs)
            run_parallel(_backward_kernel, E.size, *args)
    return grad_x, grad_dt, grad_A.sum(0), grad_B.sum(0), grad_C.sum(0), carry
