"""Numba kernels for the head-wise nonlinear cells: lstm, gru, rnn (tanh) and slstm.

The recurrence of K heads of width d (FlashRNN's head-wise block-diagonal cells, Poeppel et
al. 2024): per step t, head k and batch row b, with gx the projected inputs (the input
projection of all T steps is one torch matmul, outside) and W[k] head k's (G*d, d) block::

    pre = gx[b, t, k] + W[k] h_{t-1}[b, k]          (G*d,)  one per-head matvec
    state_t[b, k] = pointwise(pre, state_{t-1}[b, k])

with the pointwise update of statewise.ops.cells (lstm, gru: there ``W h + b_hh`` is kept
apart, rnn_tanh) or statewise.layers.slstm (slstm). Masked steps carry the state through.

Forward: one task per (head, block of batch rows), parallel over tasks with ``prange``;
each task runs its T steps, the matvec as ``for j: for b: acc[b, :] += h[b, j] W^T[j, :]``
(the inner loop is contiguous and vectorises without fastmath), and keeps what the
backward needs: every step's state and the gate activations.

Backward (BPTT, by hand): the same tasks walk t = T-1 .. 0, and per step turn the state
gradients into the pre-activation gradients ``dpre`` (the gradient of gx) and carry
``dh_{t-1} = W[k]^T dpre``. The weight and bias gradients are sums over (b, t) of outer
products, so they are one batched GEMM in torch afterwards:
``dW[k] = sum_{b,t} dpre[b, t, k] h_{t-1}[b, k]^T`` (no reduction between tasks inside).

numba is imported on first use (:func:`_compiled`), never by ``import statewise``.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from statewise.kernels.scan import torch_threads_kept
from statewise.ops.precision import float32_recurrence

#: state leaves per cell, in the order the kernels stack them (h first)
STATES: dict[str, int] = {"lstm": 2, "gru": 1, "rnn_tanh": 1, "slstm": 4}
#: gates per cell (rows of a head's block are G*d)
GATES: dict[str, int] = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "slstm": 4}

prange = range  # rebound to numba.prange by _compiled(), before any kernel compiles


# ------------------------------------------------------------------ shared pieces


def _sigmoid(a):
    return 1.0 / (1.0 + math.exp(-a))


def _log_sigmoid(a):
    return min(a, 0.0) - math.log1p(math.exp(-abs(a)))


def _project(h, wt, acc):
    """acc[b, :] += W h[b] for the rows of a block; wt = W^T (d, R)."""
    for j in range(h.shape[1]):
        for b in range(h.shape[0]):
            hj = h[b, j]
            for o in range(acc.shape[1]):
                acc[b, o] += hj * wt[j, o]


def _project_back(dpre, w, dh):
    """dh[b, :] += W^T dpre[b] for the rows of a block; w = W (R, d)."""
    for o in range(dpre.shape[1]):
        for b in range(dpre.shape[0]):
            g = dpre[b, o]
            for j in range(dh.shape[1]):
                dh[b, j] += g * w[o, j]


def _blocks(batch, heads, bblock):
    """(number of tasks, batch blocks per head)."""
    per_head = (batch + bblock - 1) // bblock
    return heads * per_head, per_head


# ------------------------------------------------------------------- forwards
# Every forward takes gx (B, T, K, R), wt (K, d, R) = W^T, bhh (K, R), s0 (S, B, K, d),
# keep (B, T) and fills seq (S, B, T, K, d) (the state after every step, seq[0] = h = y)
# and acts (B, T, K, A) (what the backward needs besides the states).


def _lstm_forward(gx, wt, bhh, s0, keep, bblock, seq, acts):
    batch, steps, heads, rows = gx.shape
    d = rows // 4
    tasks, per_head = _blocks(batch, heads, bblock)
    for task in prange(tasks):
        k = task // per_head
        b0 = (task % per_head) * bblock
        nb = min(bblock, batch - b0)
        h = s0[0, b0 : b0 + nb, k].copy()
        c = s0[1, b0 : b0 + nb, k].copy()
        acc = np.empty((nb, rows), gx.dtype)
        for t in range(steps):
            acc[:] = gx[b0 : b0 + nb, t, k]
            _project(h, wt[k], acc)
            for b in range(nb):
                if keep[b0 + b, t]:
                    for j in range(d):
                        i = _sigmoid(acc[b, j])
                        f = _sigmoid(acc[b, d + j])
                        g = math.tanh(acc[b, 2 * d + j])
                        o = _sigmoid(acc[b, 3 * d + j])
                        c[b, j] = f * c[b, j] + i * g
                        h[b, j] = o * math.tanh(c[b, j])
                        a = acts[b0 + b, t, k]
                        a[j], a[d + j], a[2 * d + j], a[3 * d + j] = i, f, g, o
                seq[0, b0 + b, t, k] = h[b]
                seq[1, b0 + b, t, k] = c[b]


def _gru_forward(gx, wt, bhh, s0, keep, bblock, seq, acts):
    batch, steps, heads, rows = gx.shape
    d = rows // 3
    tasks, per_head = _blocks(batch, heads, bblock)
    for task in prange(tasks):
        k = task // per_head
        b0 = (task % per_head) * bblock
        nb = min(bblock, batch - b0)
        h = s0[0, b0 : b0 + nb, k].copy()
        acc = np.empty((nb, rows), gx.dtype)
        for t in range(steps):
            for b in range(nb):
                acc[b] = bhh[k]
            _project(h, wt[k], acc)  # gh = W h + b_hh
            for b in range(nb):
                if keep[b0 + b, t]:
                    x = gx[b0 + b, t, k]
                    a = acts[b0 + b, t, k]
                    for j in range(d):
                        r = _sigmoid(x[j] + acc[b, j])
                        z = _sigmoid(x[d + j] + acc[b, d + j])
                        n = math.tanh(x[2 * d + j] + r * acc[b, 2 * d + j])
                        h[b, j] = n + z * (h[b, j] - n)
                        a[j], a[d + j], a[2 * d + j], a[3 * d + j] = r, z, n, acc[b, 2 * d + j]
                seq[0, b0 + b, t, k] = h[b]


def _rnn_tanh_forward(gx, wt, bhh, s0, keep, bblock, seq, acts):
    batch, steps, heads, rows = gx.shape
    tasks, per_head = _blocks(batch, heads, bblock)
    for task in prange(tasks):
        k = task // per_head
        b0 = (task % per_head) * bblock
        nb = min(bblock, batch - b0)
        h = s0[0, b0 : b0 + nb, k].copy()
        acc = np.empty((nb, rows), gx.dtype)
        for t in range(steps):
            acc[:] = gx[b0 : b0 + nb, t, k]
            _project(h, wt[k], acc)
            for b in range(nb):
                if keep[b0 + b, t]:
                    for j in range(rows):
                        h[b, j] = math.tanh(acc[b, j])
                seq[0, b0 + b, t, k] = h[b]


def _slstm_forward(gx, wt, bhh, s0, keep, bblock, seq, acts):
    batch, steps, heads, rows = gx.shape
    d = rows // 4
    tasks, per_head = _blocks(batch, heads, bblock)
    for task in prange(tasks):
        k = task // per_head
        b0 = (task % per_head) * bblock
        nb = min(bblock, batch - b0)
        s = s0[:, b0 : b0 + nb, k].copy()  # (4, nb, d): h, c, n, m
        acc = np.empty((nb, rows), gx.dtype)
        for t in range(steps):
            acc[:] = gx[b0 : b0 + nb, t, k]
            _project(s[0], wt[k], acc)
            for b in range(nb):
                if keep[b0 + b, t]:
                    acts[b0 + b, t, k] = acc[b]  # the raw pre-activations i, f, z, o
                    for j in range(d):
                        log_f = _log_sigmoid(acc[b, d + j])
                        m_prev = -np.inf if s[2, b, j] == 0 else s[3, b, j]
                        m = max(log_f + m_prev, acc[b, j])
                        f = math.exp(log_f + m_prev - m)
                        i = math.exp(acc[b, j] - m)
                        s[1, b, j] = f * s[1, b, j] + i * math.tanh(acc[b, 2 * d + j])
                        s[2, b, j] = f * s[2, b, j] + i
                        s[3, b, j] = m
                        s[0, b, j] = _sigmoid(acc[b, 3 * d + j]) * s[1, b, j] / s[2, b, j]
                for q in range(4):
                    seq[q, b0 + b, t, k] = s[q, b]


# ------------------------------------------------------------------ backwards
# Every backward takes dy (B, T, K, d) (the gradient of seq[0]), dsT (S, B, K, d) (of the
# final state), w (K, R, d), s0, seq, acts, keep, bblock and fills dgx (B, T, K, R) (the
# gradient of gx; zero at masked steps), dgh (B, T, K, R) (of the recurrent term W h, the
# same array as dgx except for the gru) and ds0 (S, B, K, d).


def _lstm_backward(dy, dsT, w, s0, seq, acts, keep, bblock, dgx, dgh, ds0):
    batch, steps, heads, rows = dgx.shape
    d = rows // 4
    tasks, per_head = _blocks(batch, heads, bblock)
    for task in prange(tasks):
        k = task // per_head
        b0 = (task % per_head) * bblock
        nb = min(bblock, batch - b0)
        dh = dsT[0, b0 : b0 + nb, k].copy()
        dc = dsT[1, b0 : b0 + nb, k].copy()
        dpre = np.zeros((nb, rows), dgx.dtype)
        for t in range(steps - 1, -1, -1):
            for b in range(nb):
                dh[b] += dy[b0 + b, t, k]
                if not keep[b0 + b, t]:
                    dpre[b] = 0.0
                    continue
                a = acts[b0 + b, t, k]
                for j in range(d):
                    i, f, g, o = a[j], a[d + j], a[2 * d + j], a[3 * d + j]
                    tc = math.tanh(seq[1, b0 + b, t, k, j])
                    c_prev = seq[1, b0 + b, t - 1, k, j] if t > 0 else s0[1, b0 + b, k, j]
                    dcj = dc[b, j] + dh[b, j] * o * (1.0 - tc * tc)
                    dpre[b, j] = dcj * g * i * (1.0 - i)
                    dpre[b, d + j] = dcj * c_prev * f * (1.0 - f)
                    dpre[b, 2 * d + j] = dcj * i * (1.0 - g * g)
                    dpre[b, 3 * d + j] = dh[b, j] * tc * o * (1.0 - o)
                    dc[b, j] = dcj * f
                    dh[b, j] = 0.0
            _project_back(dpre, w[k], dh)
            dgx[b0 : b0 + nb, t, k] = dpre
        ds0[0, b0 : b0 + nb, k] = dh
        ds0[1, b0 : b0 + nb, k] = dc


def _gru_backward(dy, dsT, w, s0, seq, acts, keep, bblock, dgx, dgh, ds0):
    batch, steps, heads, rows = dgx.shape
    d = rows // 3
    tasks, per_head = _blocks(batch, heads, bblock)
    for task in prange(tasks):
        k = task // per_head
        b0 = (task % per_head) * bblock
        nb = min(bblock, batch - b0)
        dh = dsT[0, b0 : b0 + nb, k].copy()
        dpre = np.zeros((nb, rows), dgx.dtype)  # the gradient of gh = W h + b_hh
        for t in range(steps - 1, -1, -1):
            for b in range(nb):
                dh[b] += dy[b0 + b, t, k]
                if not keep[b0 + b, t]:
                    dpre[b] = 0.0
                    dgx[b0 + b, t, k] = 0.0
                    continue
                a = acts[b0 + b, t, k]
                for j in range(d):
                    r, z, n, ghn = a[j], a[d + j], a[2 * d + j], a[3 * d + j]
                    h_prev = seq[0, b0 + b, t - 1, k, j] if t > 0 else s0[0, b0 + b, k, j]
                    dn = dh[b, j] * (1.0 - z) * (1.0 - n * n)
                    dr = dn * ghn * r * (1.0 - r)
                    dz = dh[b, j] * (h_prev - n) * z * (1.0 - z)
                    dgx[b0 + b, t, k, j] = dr
                    dgx[b0 + b, t, k, d + j] = dz
                    dgx[b0 + b, t, k, 2 * d + j] = dn
                    dpre[b, j], dpre[b, d + j], dpre[b, 2 * d + j] = dr, dz, dn * r
                    dh[b, j] = dh[b, j] * z
            _project_back(dpre, w[k], dh)
            dgh[b0 : b0 + nb, t, k] = dpre
        ds0[0, b0 : b0 + nb, k] = dh


def _rnn_tanh_backward(dy, dsT, w, s0, seq, acts, keep, bblock, dgx, dgh, ds0):
    batch, steps, heads, rows = dgx.shape
    tasks, per_head = _blocks(batch, heads, bblock)
    for task in prange(tasks):
        k = task // per_head
        b0 = (task % per_head) * bblock
        nb = min(bblock, batch - b0)
        dh = dsT[0, b0 : b0 + nb, k].copy()
        dpre = np.zeros((nb, rows), dgx.dtype)
        for t in range(steps - 1, -1, -1):
            for b in range(nb):
                dh[b] += dy[b0 + b, t, k]
                if not keep[b0 + b, t]:
                    dpre[b] = 0.0
                    continue
                for j in range(rows):
                    h = seq[0, b0 + b, t, k, j]
                    dpre[b, j] = dh[b, j] * (1.0 - h * h)
                    dh[b, j] = 0.0
            _project_back(dpre, w[k], dh)
            dgx[b0 : b0 + nb, t, k] = dpre
        ds0[0, b0 : b0 + nb, k] = dh


def _slstm_backward(dy, dsT, w, s0, seq, acts, keep, bblock, dgx, dgh, ds0):
    """Through the stabilised update of statewise.layers.slstm, m included: with
    a = log f~ + m_{t-1} (or -inf on an empty memory), m_t = max(a, i~), f' = e^{a - m_t},
    i' = e^{i~ - m_t}; a tie of the max splits its gradient in half, as torch.maximum does."""
    batch, steps, heads, rows = dgx.shape
    d = rows // 4
    tasks, per_head = _blocks(batch, heads, bblock)
    for task in prange(tasks):
        k = task // per_head
        b0 = (task % per_head) * bblock
        nb = min(bblock, batch - b0)
        ds = dsT[:, b0 : b0 + nb, k].copy()  # (4, nb, d): dh, dc, dn, dm
        dpre = np.zeros((nb, rows), dgx.dtype)
        for t in range(steps - 1, -1, -1):
            for b in range(nb):
                ds[0, b] += dy[b0 + b, t, k]
                if not keep[b0 + b, t]:
                    dpre[b] = 0.0
                    continue
                raw = acts[b0 + b, t, k]
                for j in range(d):
                    if t > 0:
                        c_prev = seq[1, b0 + b, t - 1, k, j]
                        n_prev = seq[2, b0 + b, t - 1, k, j]
                        m_prev = seq[3, b0 + b, t - 1, k, j]
                    else:
                        c_prev, n_prev, m_prev = (
                            s0[1, b0 + b, k, j],
                            s0[2, b0 + b, k, j],
                            s0[3, b0 + b, k, j],
                        )
                    c, n = seq[1, b0 + b, t, k, j], seq[2, b0 + b, t, k, j]
                    m = seq[3, b0 + b, t, k, j]
                    empty = n_prev == 0
                    log_f = _log_sigmoid(raw[d + j])
                    a = -np.inf if empty else log_f + m_prev
                    f = math.exp(a - m)
                    i = math.exp(raw[j] - m)
                    z = math.tanh(raw[2 * d + j])
                    o = _sigmoid(raw[3 * d + j])
                    dh = ds[0, b, j]
                    dc = ds[1, b, j] + dh * o / n
                    dn = ds[2, b, j] - dh * o * c / (n * n)
                    da = (dc * c_prev + dn * n_prev) * f
                    di = (dc * z + dn) * i
                    dm = ds[3, b, j] - da - di
                    if a > raw[j]:
                        da += dm
                    elif a < raw[j]:
                        di += dm
                    else:
                        da += 0.5 * dm
                        di += 0.5 * dm
                    dpre[b, j] = di
                    dpre[b, d + j] = da * (1.0 - _sigmoid(raw[d + j]))
                    dpre[b, 2 * d + j] = dc * i * (1.0 - z * z)
                    dpre[b, 3 * d + j] = dh * (c / n) * o * (1.0 - o)
                    ds[0, b, j] = 0.0
                    ds[1, b, j] = dc * f
                    ds[2, b, j] = dn * f
                    ds[3, b, j] = 0.0 if empty else da
            _project_back(dpre, w[k], ds[0])
            dgx[b0 : b0 + nb, t, k] = dpre
        ds0[:, b0 : b0 + nb, k] = ds


# ------------------------------------------------------------------- dispatch

_HELPERS = ("_sigmoid", "_log_sigmoid", "_project", "_project_back", "_blocks")
_ACTS = {"lstm": 4, "gru": 4, "rnn_tanh": 0, "slstm": 4}  # acts per unit (times d)


@functools.cache
def _compiled() -> dict[str, tuple[Callable, Callable]]:
    """Import numba and jit the kernels (lazily, once; compiled code is cached on disk)."""
    numba = importlib.import_module("numba")
    module = globals()
    module["prange"] = numba.prange
    for name in _HELPERS:  # the kernels call these by their global names
        module[name] = numba.njit(cache=True)(module[name])
    jit = numba.njit(cache=True, parallel=True)
    return {
        cell: (jit(module[f"_{cell}_forward"]), jit(module[f"_{cell}_backward"])) for cell in STATES
    }


def _batch_block(batch: int, heads: int) -> int:
    """Batch rows per task: whole batches when the heads alone keep every thread busy."""
    threads = importlib.import_module("numba").get_num_threads()
    per_head = min(batch, -(-threads // heads))
    return -(-batch // per_head)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class _Fused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell, gx, weight, bias_hh, keep, *state0):
        batch, steps, heads, rows = gx.shape
        width = weight.shape[2]
        forward, _ = _compiled()[cell]
        with torch_threads_kept():  # numba's first call may set torch's thread count
            bblock = _batch_block(batch, heads)
        s0 = torch.stack(state0).contiguous()
        seq = gx.new_empty(len(state0), batch, steps, heads, width)
        acts = gx.new_empty(batch, steps, heads, _ACTS[cell] * width)
        bhh = bias_hh if bias_hh is not None else gx.new_zeros(heads, rows)
        wt = weight.transpose(1, 2)
        with torch_threads_kept():
            forward(
                _np(gx), _np(wt), _np(bhh), _np(s0), _np(keep), bblock, seq.numpy(), acts.numpy()
            )
        ctx.cell, ctx.bblock, ctx.has_bias = cell, bblock, bias_hh is not None
        ctx.save_for_backward(weight, s0, seq, acts, keep)
        final = seq[:, :, -1].clone()
        return (seq[0], *final.unbind(0))

    @staticmethod
    def backward(ctx, dy, *dfinal):
        weight, s0, seq, acts, keep = ctx.saved_tensors
        _, backward = _compiled()[ctx.cell]
        n_states, batch, steps, heads, width = seq.shape
        rows = weight.shape[1]
        dy = torch.zeros_like(seq[0]) if dy is None else dy
        dsT = torch.stack([torch.zeros_like(s0[0]) if g is None else g for g in dfinal])
        dgx = seq.new_empty(batch, steps, heads, rows)
        dgh = seq.new_empty(batch, steps, heads, rows) if ctx.cell == "gru" else dgx
        ds0 = torch.empty_like(s0)
        with torch_threads_kept():
            backward(
                _np(dy),
                _np(dsT),
                _np(weight),
                s0.numpy(),
                seq.numpy(),
                acts.numpy(),
                keep.numpy(),
                ctx.bblock,
                dgx.numpy(),
                dgh.numpy(),
                ds0.numpy(),
            )
        # dW[k] = sum_{b,t} dgh[b, t, k] h_{t-1}[b, k]^T: one batched GEMM over heads
        h_prev = torch.cat([s0[0].unsqueeze(1), seq[0, :, :-1]], dim=1)
        dweight = torch.einsum("btko,btkj->koj", dgh, h_prev)
        dbias = dgh.sum(dim=(0, 1)) if ctx.has_bias else None
        return (None, dgx, dweight, dbias, None, *ds0.unbind(0))


@float32_recurrence
def fused_recurrence(
    cell: str,
    gx: Tensor,
    weight: Tensor,
    bias_hh: Tensor | None,
    state: tuple[Tensor, ...],
    mask: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run the head-wise recurrence of ``cell`` with the numba kernels (differentiable).

    gx (B, T, K, G*d): the projected inputs, head by head (gate order inside a head as in
    statewise.ops.cells, or i, f, z, o for the slstm); weight (K, G*d, d): the recurrent
    blocks; bias_hh (K, G*d): the gru's b_hh (None for the other cells, whose b_hh belongs
    in gx); state: the leaves of the state, each (B, K, d) (h, c for lstm; h, c, n, m for
    slstm); mask (B, T) bool, True = real step. Returns (h of every step (B, T, K, d),
    the final state leaves). CPU float32/float64 tensors only.
    """
    if cell not in STATES:
        raise ValueError(f"cell must be one of {tuple(STATES)}, got {cell!r}")
    if bias_hh is not None and cell != "gru":
        raise ValueError("bias_hh goes into gx for every cell but the gru")
    batch, steps = gx.shape[:2]
    keep = torch.ones(batch, steps, dtype=torch.bool) if mask is None else mask.contiguous()
    y, *final = _Fused.apply(cell, gx, weight, bias_hh, keep, *state)
    return y, tuple(final)
