"""Numba kernels of the diagonal linear recurrence h_t = a_t * h_{t-1} + b_t (and its backward).

The twin is :class:`statewise.ops.scan._LoopRecurrence`; this module only holds the compiled
loops and their tensor wrappers, the autograd Function lives next to the twin.

Layout. Every call is first brought to a canonical 4-d form (:func:`canonical`):

    b, h: (B, T, M, K)      a: (Ba, Ta, Ma, Ka)      h0: (B, M, K)

with each of Ba, Ta, Ma, Ka either 1 (a broadcast over that axis) or the full size, all
C-contiguous and of one dtype (float32/64 or complex64/128). Time is the outer loop of a
task and the K channels of a row the inner, contiguous one (so it vectorises); the tasks
are blocks of (batch, M rows, K columns), run in parallel with ``prange``.

Backward (conj is the identity for real dtypes), with g_t = dL/dh_t from outside:

    G_t = g_t + conj(a_{t+1}) G_{t+1},   G_{T-1} = g_{T-1}     (the same loop, reversed)
    dL/db_t = G_t,   dL/da_t = G_t conj(h_{t-1}),   dL/dh0 = conj(a_0) G_0

one fused pass: G, dL/da (summed over the axes where a is broadcast) and dL/dh0 together.
This module imports numba; :mod:`statewise.ops.scan` imports it only when the numba
backend is in force, so ``import statewise`` does not import numba.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numba
import numpy as np
import torch

DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)
# a task is worth splitting off when it covers at least this many channels per time step
_MIN_TASK_WIDTH = 64
# below this many elements a call runs on one thread: waking the others costs more, and
# on a loaded machine a parallel region can wait milliseconds for a descheduled thread
PARALLEL_MIN_ELEMENTS = 1 << 18


@numba.njit(cache=True, inline="always")
def _task_block(task, n_m, n_k, m_block, k_block, rows, cols):
    """Task number -> (batch index, rows m0:m1, columns k0:k1) of its block."""
    bi = task // (n_m * n_k)
    m0 = (task // n_k) % n_m * m_block
    k0 = task % n_k * k_block
    return bi, m0, min(rows, m0 + m_block), k0, min(cols, k0 + k_block)


@numba.njit(cache=True, parallel=True, nogil=True)
def _forward_kernel(a, b, h0, out, m_block, k_block):
    """out[:, t] = a[:, t] * out[:, t - 1] + b[:, t] (out[:, -1] = h0), over task blocks.

    The inner loops run over 1-d row views from index 0, which numba knows to be in range:
    they vectorise (indexing the 4-d arrays with offset indices does not, 3-4x slower).
    """
    batch, seq_len, rows, cols = b.shape
    a_b, a_t, a_m, a_k = a.shape
    n_m = (rows + m_block - 1) // m_block
    n_k = (cols + k_block - 1) // k_block
    for task in numba.prange(batch * n_m * n_k):
        bi, m0, m1, k0, k1 = _task_block(task, n_m, n_k, m_block, k_block, rows, cols)
        ab = bi if a_b > 1 else 0
        for t in range(seq_len):
            at = t if a_t > 1 else 0
            prev = h0[bi] if t == 0 else out[bi, t - 1]
            for m in range(m0, m1):
                am = m if a_m > 1 else 0
                h, p, x = out[bi, t, m, k0:k1], prev[m, k0:k1], b[bi, t, m, k0:k1]
                if a_k > 1:
                    ar = a[ab, at, am, k0:k1]
                    for k in range(k1 - k0):
                        h[k] = ar[k] * p[k] + x[k]
                else:
                    av = a[ab, at, am, 0]
                    for k in range(k1 - k0):
                        h[k] = av * p[k] + x[k]


@numba.njit(cache=True, parallel=True, nogil=True)
def _backward_kernel(a, h0, out, grad_out, grad_b, grad_a, grad_h0, m_block, k_block):
    """G into grad_b, sum of G conj(h_{t-1}) into grad_a (B, Ta, Ma, Ka, zeroed), dL/dh0.

    grad_a is per batch element (the caller sums over batch when Ba = 1); the axes where
    a is broadcast (Ta, Ma, Ka = 1) are summed here, so those axes are never split into
    tasks (the caller picks m_block = M when Ma = 1, k_block = K when Ka = 1).
    """
    batch, seq_len, rows, cols = out.shape
    a_b, a_t, a_m, a_k = a.shape
    n_m = (rows + m_block - 1) // m_block
    n_k = (cols + k_block - 1) // k_block
    for task in numba.prange(batch * n_m * n_k):
        bi, m0, m1, k0, k1 = _task_block(task, n_m, n_k, m_block, k_block, rows, cols)
        width = k1 - k0
        ab = bi if a_b > 1 else 0
        for s in range(seq_len):
            t = seq_len - 1 - s
            at = t if a_t > 1 else 0
            an = t + 1 if a_t > 1 else 0  # the time index of a_{t+1}
            prev = h0[bi] if t == 0 else out[bi, t - 1]
            for m in range(m0, m1):
                am = m if a_m > 1 else 0
                G, g, p = grad_b[bi, t, m, k0:k1], grad_out[bi, t, m, k0:k1], prev[m, k0:k1]
                if t == seq_len - 1:
                    G[:] = g
                else:
                    G_next = grad_b[bi, t + 1, m, k0:k1]
                    if a_k > 1:
                        ar = a[ab, an, am, k0:k1]
                        for k in range(width):
                            G[k] = g[k] + np.conj(ar[k]) * G_next[k]
                    else:
                        av = np.conj(a[ab, an, am, 0])
                        for k in range(width):
                            G[k] = g[k] + av * G_next[k]
                if a_k > 1:
                    ga = grad_a[bi, at, am, k0:k1]
                    for k in range(width):
                        ga[k] += G[k] * np.conj(p[k])
                else:
                    acc = grad_a[bi, at, am, 0]
                    for k in range(width):
                        acc += G[k] * np.conj(p[k])
                    grad_a[bi, at, am, 0] = acc
        for m in range(m0, m1):
            am = m if a_m > 1 else 0
            G, gh = grad_b[bi, 0, m, k0:k1], grad_h0[bi, m, k0:k1]
            if a_k > 1:
                ar = a[ab, 0, am, k0:k1]
                for k in range(width):
                    gh[k] = np.conj(ar[k]) * G[k]
            else:
                av = np.conj(a[ab, 0, am, 0])
                for k in range(width):
                    gh[k] = av * G[k]


def supported(*tensors: torch.Tensor) -> bool:
    """True when the kernel can take these tensors: all on CPU, all of a supported dtype."""
    return all(t.device.type == "cpu" and t.dtype in DTYPES for t in tensors)


def canonical(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, b, h0) as contiguous (Ba, Ta, Ma, Ka), (B, T, M, K), (B, M, K) of one dtype.

    a has b's rank and broadcasts to it (checked by the caller). The trailing axes of b
    are merged into M x K: K the last run of axes over which a is either full or
    broadcast, M the rest; when a's pattern over the rest is mixed, a is expanded there
    (a copy of a's size, rare). Differentiable torch ops: autograd sums the gradient
    back to a's own shape and dtype.
    """
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), h0.dtype)
    batch, seq_len = b.shape[:2]
    pairs = [(n, m) for n, m in zip(b.shape[2:], a.shape[2:]) if n > 1]
    full = [m == n for n, m in pairs]
    split = len(full)  # the last run of equal kinds starts at split
    while split > 0 and full[split - 1] == full[-1]:
        split -= 1
    rows = math.prod(n for n, _ in pairs[:split])
    cols = math.prod(n for n, _ in pairs[split:])
    a_k = cols if full and full[-1] else 1
    a_m = rows if any(full[:split]) else 1
    a = a.reshape(a.shape[:2] + tuple(m for _, m in pairs))
    if a_m > 1 and not all(full[:split]):  # mixed: expand a over the leading axes
        a = a.expand(a.shape[:2] + tuple(n for n, _ in pairs[:split]) + a.shape[2 + split :])
    a = a.reshape(a.shape[0], a.shape[1], a_m, a_k)
    b = b.reshape(batch, seq_len, rows, cols)
    h0 = h0.reshape(batch, rows, cols)
    return tuple(t.to(dtype).contiguous() for t in (a, b, h0))


def threads_for(numel: int, torch_threads: int | None = None) -> int:
    """Threads for a kernel over ``numel`` elements: torch's thread count (capped by numba's
    pool), or 1 below :data:`PARALLEL_MIN_ELEMENTS`."""
    if numel < PARALLEL_MIN_ELEMENTS:
        return 1
    torch_threads = torch.get_num_threads() if torch_threads is None else torch_threads
    return max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))


@contextlib.contextmanager
def torch_threads_kept() -> Iterator[int]:
    """Yields torch's thread count and puts it back afterwards. numba's OpenMP threading
    layer shares the OpenMP runtime with torch: starting its pool (numba's first
    ``get_num_threads`` or parallel call) sets the runtime's thread count to numba's pool
    size, which is torch's count as well; without this, an arena cell of 1 thread trained
    on every core after its first kernel."""
    before = torch.get_num_threads()
    try:
        yield before
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def run_parallel(kernel, numel: int, *args) -> None:
    """``kernel(*args)`` with :func:`threads_for` ``(numel)`` numba threads, torch's thread
    count left as it was (:func:`torch_threads_kept`)."""
    with torch_threads_kept() as torch_threads:
        before = numba.get_num_threads()
        numba.set_num_threads(threads_for(numel, torch_threads))
        try:
            kernel(*args)
        finally:
            numba.set_num_threads(before)


def _blocks(a_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[int, int]:
    """(m_block, k_block): split rows/columns into tasks only when batch alone is too few.

    Axes over which a is broadcast are never split (the backward sums over them).
    """
    batch, _, rows, cols = out_shape
    want = 2 * threads_for(math.prod(out_shape))
    if batch >= want:
        return rows, cols
    splits = -(-want // batch)
    if a_shape[2] == rows and rows >= splits and rows * cols // splits >= _MIN_TASK_WIDTH:
        return -(-rows // splits), cols
    if a_shape[3] == cols and cols // splits >= _MIN_TASK_WIDTH:
        return rows, -(-cols // splits)
    return rows, cols


def forward(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """All h_t, (B, T, M, K), from canonical (a, b, h0) (see :func:`canonical`)."""
    out = torch.empty_like(b)
    if b.shape[1] > 0:
        arrays = (t.numpy() for t in (a, b, h0, out))
        run_parallel(_forward_kernel, b.numel(), *arrays, *_blocks(a.shape, b.shape))
    return out


def backward(
    a: torch.Tensor, h0: torch.Tensor, out: torch.Tensor, grad_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dL/da in a's canonical shape, dL/db, dL/dh0) from the saved a, h0, out and dL/dout."""
    grad_out = grad_out.to(out.dtype).contiguous()
    grad_b = torch.empty_like(out)
    grad_h0 = torch.empty_like(h0)
    grad_a = out.new_zeros((out.shape[0],) + a.shape[1:])
    arrays = (a, h0, out, grad_out, grad_b, grad_a, grad_h0)
    blocks = _blocks(a.shape, out.shape)
    run_parallel(_backward_kernel, out.numel(), *(t.numpy() for t in arrays), *blocks)
    if a.shape[0] == 1 and out.shape[0] > 1:
        grad_a = grad_a.sum(0, keepdim=True)
    return grad_a, grad_b, grad_h0
