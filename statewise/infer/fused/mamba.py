"""Fused decode steps of Mamba (statewise.layers.mamba) and Mamba-2 (statewise.layers.mamba2),
one row at a time.

Both start with a depthwise causal conv of K taps w_1 .. w_K (conv1d.weight[:, 0]) over the
window of the last K - 1 inputs u_1 .. u_{K-1} (state "conv", (B, K-1, C)) and the new
input u_K, as ops.conv.causal_conv1d computes it:

    c = act(((u_K w_K + u_1 w_1) + ... + u_{K-1} w_{K-1}) + conv_bias)
    window <- (u_2, ..., u_K)

act one of CONV_ACTIVATIONS (silu, gelu, gelu tanh, relu, tanh, sigmoid).

Mamba (E channels, N = d_state, R = dt_rank, h (B, E, N)):

    (u, z) = W_in x (+ b_in);  c = conv(u)
    (r, B, C) = W_x c;  dt = softplus(W_dt r + b_dt)        (E,)
    A = -exp(A_log)                                          (E, N), once per call
    a = exp(dt[e] A[e, n])    (2 exp(dt[e] A[e, n]) - 1 with negative eigenvalues)
                              (exp by exp_block: vectorised, within a few ulp)
    h[e, n] = a h[e, n] + (dt[e] c[e]) B[n]
    y[e] = sum_n h[e, n] C[n] + D[e] c[e]
    out = W_out (y * silu(z)) (+ b_out)

Mamba-2 (H heads of P = head_dim channels, G groups, N = d_state, S (B, H, N, P); head h
reads the B, C of group g = h // (H / G)):

    (z, xBC, dt) = W_in x (+ b_in);  (x, B, C) = conv(xBC)     x (H, P), B, C (G, N)
    dt[h] = clamp(softplus(dt[h] + dt_bias[h]), *dt_limit)
    a[h] = exp(dt[h] * -exp(A_log[h]))    (2 a - 1 with negative eigenvalues)
    S[h, n, p] = a[h] S[h, n, p] + B[g, n] (x[h, p] dt[h])
    y[h, p] = sum_n C[g, n] S[h, n, p] + D[h] x[h, p]
    v = y * silu(z);  v <- v / sqrt(mean over its group of E / G channels of v^2 + eps) * w_norm
    out = W_out v (+ b_out)

With negative eigenvalues the layer runs the signed decay a through the linear-attention op
as sign(a) and exp(log max(|a|, tiny)); here a is applied directly, which is the same up to
rounding (and up to |a| < tiny, the smallest normal number, where the layer keeps tiny).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from statewise.errors import ArgumentError
from statewise.infer.fused.decoder import Stepper, array, bias_of, project, register_stepper
from statewise.kernels.decode import (
    conv_step,
    exp_block,
    gelu,
    gelu_tanh,
    sigmoid,
    silu,
    softplus,
)
from statewise.layers.mamba import Mamba
from statewise.layers.mamba2 import Mamba2
from statewise.ops.tree import State

#: CONV_ACTIVATIONS names -> the code :func:`_activate` takes
ACTIVATION_CODES = {
    "silu": 0,
    "swish": 0,
    "gelu": 1,
    "gelu_new": 2,
    "gelu_pytorch_tanh": 2,
    "relu": 3,
    "tanh": 4,
    "sigmoid": 5,
}


def activation_code(name: str) -> int:
    if name not in ACTIVATION_CODES:
        raise ArgumentError(
            f"no fused conv activation {name!r} (have {', '.join(ACTIVATION_CODES)})"
        )
    return ACTIVATION_CODES[name]


@numba.njit(cache=True)
def _activate(a, kind):
    if kind == 0:
        return silu(a)
    if kind == 1:
        return gelu(a)
    if kind == 2:
        return gelu_tanh(a)
    if kind == 3:
        return max(a, a - a)
    if kind == 4:
        return math.tanh(a)
    return sigmoid(a)


@numba.njit(cache=True)
def _activate_rows(values, kind):
    """values (B, C) <- act(values), in place."""
    rows, channels = values.shape
    for b in range(rows):
        for c in range(channels):
            values[b, c] = _activate(values[b, c], kind)


@numba.njit(cache=True)
def _transition(a_log):
    """A = -exp(A_log) (E, N)."""
    width, n_state = a_log.shape
    size = width * n_state
    a_mat = np.empty((width, n_state), dtype=a_log.dtype)
    exp_block(
        np.ascontiguousarray(a_log).reshape(size), a_mat.reshape(size), np.empty(size, np.int64)
    )
    for e in range(width):
        for n in range(n_state):
            a_mat[e, n] = -a_mat[e, n]
    return a_mat


@numba.njit(cache=True)
def _selective_step(c, dt_raw, a_mat, b_in, c_out, d_skip, z, h, negative, y):
    """Mamba's SSM step and output gate: h (B, E, N) in place, y (B, E) = gated output;
    a_mat = A (E, N)."""
    rows, width = c.shape
    n_state = a_mat.shape[1]
    size = width * n_state
    arg = np.empty((width, n_state), dtype=h.dtype)  # dt A of one row
    decay = np.empty((width, n_state), dtype=h.dtype)  # exp(dt A)
    bits = np.empty(size, dtype=np.int64)
    one = h.dtype.type(1)
    dt = np.empty(width, dtype=h.dtype)
    for b in range(rows):
        hb, bb, cb = h[b], b_in[b], c_out[b]
        for e in range(width):
            dt[e] = softplus(dt_raw[b, e])
            for n in range(n_state):
                arg[e, n] = dt[e] * a_mat[e, n]
        exp_block(arg.reshape(size), decay.reshape(size), bits)
        for e in range(width):
            du = dt[e] * c[b, e]
            he, de = hb[e], decay[e]
            acc = one - one
            for n in range(n_state):
                a = de[n]
                if negative:
                    a = a + a - one
                v = a * he[n] + du * bb[n]
                he[n] = v
                acc += v * cb[n]
            y[b, e] = (acc + c[b, e] * d_skip[e]) * silu(z[b, e])


@numba.njit(cache=True)
def _ssd_step(xbc, dt_raw, dt_bias, a_log, d_skip, dt_lo, dt_hi, n_groups, negative, s, y):
    """Mamba-2's SSM step: S (B, H, N, P) in place, y (B, H P) = C S + D x (before the norm).
    xbc (B, H P + 2 G N) is the activated conv output (x, B, C); dt_raw (B, H)."""
    rows, heads, n_state, head_dim = s.shape
    inner = heads * head_dim
    per_group = heads // n_groups
    c0 = inner + n_groups * n_state
    one = s.dtype.type(1)
    lo, hi = s.dtype.type(dt_lo), s.dtype.type(dt_hi)
    for b in range(rows):
        xb, yb = xbc[b], y[b]
        for hd in range(heads):
            dt = min(max(softplus(dt_raw[b, hd] + dt_bias[hd]), lo), hi)
            a = math.exp(dt * -math.exp(a_log[hd]))
            if negative:
                a = a + a - one
            x0 = hd * head_dim
            k0 = inner + hd // per_group * n_state
            q0 = c0 + hd // per_group * n_state
            for p in range(head_dim):
                yb[x0 + p] = 0
            for n in range(n_state):
                kn, qn, sn = xb[k0 + n], xb[q0 + n], s[b, hd, n]
                for p in range(head_dim):
                    v = a * sn[p] + kn * (xb[x0 + p] * dt)
                    sn[p] = v
                    yb[x0 + p] += qn * v
            for p in range(head_dim):
                yb[x0 + p] += d_skip[hd] * xb[x0 + p]


@numba.njit(cache=True)
def _gated_rms_norm(y, z, weight, n_groups, eps, out):
    """out = RMSNorm over each of n_groups channel groups of y * silu(z), times weight.
    Sums in float64."""
    rows, width = y.shape
    size = width // n_groups
    for b in range(rows):
        for g in range(n_groups):
            j0 = g * size
            total = 0.0
            for j in range(j0, j0 + size):
                v = y[b, j] * silu(z[b, j])
                out[b, j] = v
                total += v * v
            scale = 1.0 / math.sqrt(total / size + eps)
            for j in range(j0, j0 + size):
                out[b, j] = out[b, j] * scale * weight[j]


@register_stepper(Mamba)
def mamba_stepper(mixer: Mamba) -> Stepper:
    inner, n, rank = mixer.d_inner, mixer.d_state, mixer.dt_rank
    kind = activation_code(mixer.activation)
    kept: dict[str, object] = {}

    def transition() -> np.ndarray:
        """A, computed again only when A_log's storage or version (in-place updates)
        changed since the last step."""
        key = (mixer.A_log.data_ptr(), mixer.A_log._version)
        if kept.get("key") != key:
            kept["key"], kept["A"] = key, _transition(array(mixer.A_log))
        return kept["A"]

    def step(u: np.ndarray, state: State, x: np.ndarray) -> State:
        window, h = array(state["conv"]), array(state["ssm"])
        uz = project(u, mixer.in_proj)
        c = np.empty((u.shape[0], inner), dtype=u.dtype)
        conv_step(window, uz[:, :inner], array(mixer.conv1d.weight)[:, 0], bias_of(mixer.conv1d), c)
        _activate_rows(c, kind)
        rbc = project(c, mixer.x_proj)
        dt = project(rbc[:, :rank], mixer.dt_proj)
        y = np.empty_like(c)
        _selective_step(
            c,
            dt,
            transition(),
            rbc[:, rank : rank + n],
            rbc[:, rank + n :],
            array(mixer.D),
            uz[:, inner:],
            h,
            mixer.negative_eigenvalues,
            y,
        )
        project(y, mixer.out_proj, x)
        return state

    return step


@register_stepper(Mamba2)
def mamba2_stepper(mixer: Mamba2) -> Stepper:
    inner, conv_dim = mixer.d_inner, mixer.conv_dim
    kind = activation_code(mixer.activation)
    dt_lo, dt_hi = (float(v) for v in mixer.dt_limit)
    eps = float(mixer.norm.eps)

    def step(u: np.ndarray, state: State, x: np.ndarray) -> State:
        window, s = array(state["conv"]), array(state["ssm"])
        zxd = project(u, mixer.in_proj)
        xbc = np.empty((u.shape[0], conv_dim), dtype=u.dtype)
        conv_step(
            window,
            zxd[:, inner : inner + conv_dim],
            array(mixer.conv1d.weight)[:, 0],
            bias_of(mixer.conv1d),
            xbc,
        )
        _activate_rows(xbc, kind)
        y = np.empty((u.shape[0], inner), dtype=u.dtype)
        _ssd_step(
            xbc,
            zxd[:, inner + conv_dim :],
            array(mixer.dt_bias),
            array(mixer.A_log),
            array(mixer.D),
            dt_lo,
            dt_hi,
            mixer.n_groups,
            mixer.negative_eigenvalues,
            s,
            y,
        )
        _gated_rms_norm(y, zxd[:, :inner], array(mixer.norm.weight), mixer.n_groups, eps, y)
        project(y, mixer.out_proj, x)
        return state

    return step
