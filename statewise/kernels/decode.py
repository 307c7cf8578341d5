"""Numba kernels for one decode step: the pieces every block's step is made of.

The decode path (statewise.infer.fused) runs a block's step for B rows as a few of these
calls on NumPy views of the model's own tensors, with no PyTorch op in between:

    linear(x, w, bias, out, accumulate)   out[b] (+)= W x[b] + bias       W (out, in)
    norm(x, w, bias, eps, centred, out)   LayerNorm (centred) or RMSNorm of each row
    mlp_activation(up, gate, kind, out)   gelu(up), gelu_tanh(gate) * up, silu(gate) * up
    add(x, y)                             x += y
    conv_step(new, window, w, bias, out)  one step of a depthwise causal conv
    exp_block(x, out, bits)               exp of a vector, vectorised (no libm call)
    moments(values, eps)                  mean and 1 / std of a vector (Layer/GroupNorm)

Batch invariance: every row's arithmetic is the same instruction sequence whatever the
number of rows (the loops run per row; ``linear`` parallelises over output features,
never inside a row's sum), so a row's result does not depend on its neighbours, and a
request decodes to the same tokens alone or in a batch.

``linear`` reads W in PyTorch's (out, in) layout, one output feature at a time, and takes
that row's dot product with every input row while it is in cache: W is read once per
call however many rows there are. Only its dot products may be reassociated (fastmath
``reassoc``), which lets LLVM vectorise the sum; that reassociation is fixed at compile
time, so the order is still the same for every row. Measured on this machine (1 thread,
weights from DRAM, a 512 -> 2048 -> 512 MLP): 33 GB/s at one row, against 10 GB/s for the
(in, out)-layout axpy form that vectorises without fastmath.

This module imports numba; statewise.infer.fused imports it when a fused decoder is built.
"""

from __future__ import annotations

import math

import numba
import numpy as np

MLP_KINDS = {"gelu": 0, "geglu": 1, "swiglu": 2}

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_GELU_TANH_C = math.sqrt(2.0 / math.pi)


@numba.njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def linear(x, w, bias, out, accumulate):
    """out[b, o] = (out[b, o] if accumulate else 0) + (sum_j w[o, j] x[b, j] + bias[o]);
    ``bias`` of length 0 means none."""
    rows = x.shape[0]
    n_out, n_in = w.shape
    has_bias = bias.shape[0] > 0
    for o in numba.prange(n_out):
        w_row = w[o]
        for b in range(rows):
            x_row = x[b]
            acc = x_row.dtype.type(0)
            for j in range(n_in):
                acc += w_row[j] * x_row[j]
            if has_bias:
                acc += bias[o]
            out[b, o] = out[b, o] + acc if accumulate else acc


@numba.njit(cache=True)
def moments(values, eps, centred=True):
    """(mean, 1 / sqrt(var + eps)) of a vector, summed in float64; with ``centred`` False
    the mean is taken as 0 (RMSNorm's mean square). A LayerNorm row, or one group of a
    GroupNorm (the per-head norms of RWKV-6 and the mLSTM)."""
    width = values.shape[0]
    mean = 0.0
    if centred:
        for j in range(width):
            mean += values[j]
        mean /= width
    var = 0.0
    for j in range(width):
        diff = values[j] - mean
        var += diff * diff
    return mean, 1.0 / math.sqrt(var / width + eps)


@numba.njit(cache=True)
def norm(x, w, bias, eps, centred, out):
    """Each row of x normalised: (x - mean) / sqrt(var + eps) * w + bias when ``centred``
    (LayerNorm), else x / sqrt(mean(x^2) + eps) * w (RMSNorm; ``bias`` unused)."""
    rows, width = x.shape
    for b in range(rows):
        row = x[b]
        mean, scale = moments(row, eps, centred)
        for j in range(width):
            value = (row[j] - mean) * scale * w[j]
            out[b, j] = value + bias[j] if centred else value


@numba.njit(cache=True)
def gelu(a):
    return 0.5 * a * (1.0 + math.erf(a * _SQRT_HALF))


@numba.njit(cache=True)
def gelu_tanh(a):
    return 0.5 * a * (1.0 + math.tanh(_GELU_TANH_C * (a + 0.044715 * a * a * a)))


@numba.njit(cache=True)
def sigmoid(a):
    return 1.0 / (1.0 + math.exp(-a))


@numba.njit(cache=True)
def silu(a):
    return a / (1.0 + math.exp(-a))


@numba.njit(cache=True)
def softplus(a):
    """log(1 + e^a), as torch's F.softplus (linear above a = 20)."""
    return a if a > 20.0 else math.log1p(math.exp(a))


@numba.njit(cache=True)
def mlp_activation(up, gate, kind, out):
    """The MLP's hidden activation: gelu(up) (kind 0), gelu_tanh(gate) * up (1) or
    silu(gate) * up (2); see statewise.models.block.MLP."""
    rows, width = up.shape
    for b in range(rows):
        for j in range(width):
            if kind == 0:
                out[b, j] = gelu(up[b, j])
            elif kind == 1:
                out[b, j] = gelu_tanh(gate[b, j]) * up[b, j]
            else:
                out[b, j] = silu(gate[b, j]) * up[b, j]


@numba.njit(cache=True)
def add(x, y):
    """x += y, elementwise over (rows, width)."""
    rows, width = x.shape
    for b in range(rows):
        for j in range(width):
            x[b, j] += y[b, j]


@numba.njit(cache=True)
def conv_step(
    window: np.ndarray, u: np.ndarray, weight: np.ndarray, bias: np.ndarray, out: np.ndarray
) -> None:
    """One step of the causal depthwise conv of statewise.ops.conv, per row b and channel:
    out = (u w[:, K-1] + sum_{j<K-1} window[b, j] w[:, j]) + bias, then the window (B, K-1,
    C) shifts by one and takes u. weight (C, K); ``bias`` of length 0 means none."""
    rows, channels = u.shape
    taps = weight.shape[1] - 1
    has_bias = bias.shape[0] > 0
    for b in range(rows):
        for ch in range(channels):
            value = u[b, ch] * weight[ch, taps]
            for j in range(taps):
                value += window[b, j, ch] * weight[ch, j]
            out[b, ch] = value + bias[ch] if has_bias else value
        for j in range(taps - 1):
            for ch in range(channels):
                window[b, j, ch] = window[b, j + 1, ch]
        if taps > 0:
            for ch in range(channels):
                window[b, taps - 1, ch] = u[b, ch]


_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 = _LN2_HI + _LN2_LO, k _LN2_HI exact for |k| < 2^11
_LN2_LO = 1.90821492927058770002e-10


@numba.njit(cache=True)
def exp_block(x, out, bits):
    """out[i] = exp(x[i]) computed in float64 whatever the arrays' dtype, as loops without
    calls that LLVM vectorises (numba's math.exp is a scalar libm call, 5x slower here).
    exp(k ln 2 + r) = 2^k e^r, |r| <= ln 2 / 2, e^r by its Taylor series to r^13 (truncation
    < 1e-17): within a few ulp of libm for x in [-708, 709]; 0 below (libm: subnormals
    down to -745), inf above, NaN for NaN. ``bits`` is int64 scratch of the same length;
    x and out must not overlap (the loop would not vectorise)."""
    size = x.shape[0]
    for i in range(size):
        xi = float(x[i])
        inside = -708.0 <= xi <= 709.0
        v = xi if inside else (-708.0 if xi < 0.0 else 709.0)  # never NaN
        k = math.floor(v * _LOG2E + 0.5)
        r = (v - k * _LN2_HI) - k * _LN2_LO
        p = 1.0 / 6227020800.0
        p = p * r + 1.0 / 479001600.0
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        bits[i] = (np.int64(k) + 1023) << 52  # 2^k, -1022 <= k <= 1023
        if not inside:
            p = 0.0 if xi < 0.0 else (math.inf if xi > 0.0 else xi)  # xi NaN: NaN
        out[i] = p
    scale = bits.view(np.float64)
    for i in range(size):
        out[i] = out[i] * scale[i]


def empty_bias(dtype: np.dtype) -> np.ndarray:
    """The length-0 array ``linear`` reads as "no bias"."""
    return np.zeros(0, dtype=dtype)
