"""Fused decode step of RWKV-6 (statewise.layers.rwkv.RWKV6), one row at a time.

With h the block's normed input, H heads of width d (D = H d), R the ddlerp LoRA rank:

    dx = prev - h,   prev <- h                                 (state "att_shift")
    l = tanh((h + dx * mu_x) W_1)  as 5 blocks l_i of R        W_1 (D, 5 R)
    h_i = h + dx * (mu_i + l_i W_2[i])      i = w, k, v, r, g  W_2 (5, R, D)
    r, k, v = W_r h_r, W_k h_k, W_v h_v
    w = exp(-exp(decay + tanh(h_w D_1) D_2))                   per channel, in (0, 1)
    per head, i over keys, j over values (S the head's state "wkv" (d, d)):
        o_j = sum_i r_i (S_ij + u_i k_i v_j),   S_ij <- w_i S_ij + k_i v_j
    z = GroupNorm_H(o) * silu(W_g h_g)                         (per head, eps 64e-5, affine)
    a = W_o z

Without channel mixing the mixer's output is a. With it (c from ln2, prev_c from the state
"ffn_shift"):

    c = LayerNorm(h + a),   dc = prev_c - c,   prev_c <- c
    f = sigmoid(W_r' (c + dc * mu_r)) * (W_v' relu(W_k' (c + dc * mu_k))^2)
    y = a + f

The LoRA matrices (W_1, W_2, D_1, D_2) are stored (in, out), not as nn.Linear: they go
through :func:`_matmul`, which reads each row of W once for all rows of x.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from statewise.infer.fused.decoder import Stepper, array, project, register_stepper
from statewise.kernels.decode import moments, norm, sigmoid, silu
from statewise.layers.rwkv import RWKV6
from statewise.ops.tree import State


@numba.njit(cache=True)
def _matmul(x, w, out, tanh):
    """out[b] = x[b] W (tanh of it when ``tanh``), W in (in, out) layout; each output is a
    sum over j in order, so rows are independent; W is read once per call."""
    rows, n_in = x.shape
    n_out = w.shape[1]
    for b in range(rows):
        for o in range(n_out):
            out[b, o] = 0.0
    for j in range(n_in):
        w_row = w[j]
        for b in range(rows):
            xj = x[b, j]
            acc = out[b]
            for o in range(n_out):
                acc[o] += xj * w_row[o]
    if tanh:
        for b in range(rows):
            for o in range(n_out):
                out[b, o] = math.tanh(out[b, o])


@numba.njit(cache=True)
def _token_shift(h, shift, mu, dx, mixed):
    """dx = shift - h, mixed = h + dx * mu, shift <- h (row by row)."""
    rows, width = h.shape
    for b in range(rows):
        for j in range(width):
            d = shift[b, j] - h[b, j]
            dx[b, j] = d
            mixed[b, j] = h[b, j] + d * mu[j]
            shift[b, j] = h[b, j]


@numba.njit(cache=True)
def _ddlerp(h, dx, lora, w2, mus, out):
    """out[i, b] = h + dx * (mu_i + lora_i W_2[i]) for the five mixes; lora (B, 5 R) holds
    tanh already."""
    rows, width = h.shape
    n_mix, rank, _ = w2.shape
    for i in range(n_mix):
        mu = mus[i]
        for b in range(rows):
            acc = out[i, b]
            for j in range(width):
                acc[j] = 0.0
            for r in range(rank):
                coef = lora[b, i * rank + r]
                w_row = w2[i, r]
                for j in range(width):
                    acc[j] += coef * w_row[j]
            for j in range(width):
                acc[j] = h[b, j] + dx[b, j] * (mu[j] + acc[j])


@numba.njit(cache=True)
def _wkv(r, k, v, base, lora, bonus, state, gate, gn_w, gn_b, eps, z):
    """The WKV step of every head, its GroupNorm and the silu gate, into z (B, D); the
    state (B, H, d, d) is updated in place. Decay w = exp(-exp(base + lora))."""
    rows, heads, d, _ = state.shape
    for b in range(rows):
        for h in range(heads):
            lo = h * d
            out = z[b, lo : lo + d]
            v_h = v[b, lo : lo + d]
            for j in range(d):
                out[j] = 0.0
            for i in range(d):
                c = lo + i
                k_i, r_i, u_i = k[b, c], r[b, c], bonus[h, i]
                w_i = math.exp(-math.exp(base[c] + lora[b, c]))
                s = state[b, h, i]
                for j in range(d):
                    kv = k_i * v_h[j]
                    out[j] += r_i * (s[j] + u_i * kv)
                    s[j] = kv + w_i * s[j]
            mean, scale = moments(out, eps)
            for j in range(d):
                c = lo + j
                normed = (out[j] - mean) * scale * gn_w[c] + gn_b[c]
                out[j] = normed * silu(gate[b, c])


@numba.njit(cache=True)
def _sum(h, a, c):
    """c = h + a (the channel mixing's input, before ln2)."""
    rows, width = h.shape
    for b in range(rows):
        for j in range(width):
            c[b, j] = h[b, j] + a[b, j]


@numba.njit(cache=True)
def _channel_shift(c, shift, mu_k, mu_r, c_k, c_r):
    """dc = shift - c, c_k = c + dc * mu_k, c_r = c + dc * mu_r, shift <- c."""
    rows, width = c.shape
    for b in range(rows):
        for j in range(width):
            d = shift[b, j] - c[b, j]
            c_k[b, j] = c[b, j] + d * mu_k[j]
            c_r[b, j] = c[b, j] + d * mu_r[j]
            shift[b, j] = c[b, j]


@numba.njit(cache=True)
def _relu_square(x):
    rows, width = x.shape
    for b in range(rows):
        for j in range(width):
            value = x[b, j]
            x[b, j] = value * value if value > 0.0 else 0.0


@numba.njit(cache=True)
def _channel_out(x, a, receptance, value):
    """x += a + sigmoid(receptance) * value (the mixer's output y = a + f into the residual)."""
    rows, width = x.shape
    for b in range(rows):
        for j in range(width):
            x[b, j] += a[b, j] + sigmoid(receptance[b, j]) * value[b, j]


@register_stepper(RWKV6)
def rwkv_stepper(mixer: RWKV6) -> Stepper:
    att, ffn = mixer.att, mixer.ffn
    mix_rank = att.time_maa_w2.shape[1]
    decay_rank = att.time_decay_w1.shape[1]

    def step(u: np.ndarray, state: State, x: np.ndarray) -> State:
        rows, width = u.shape
        dtype = u.dtype
        dx = np.empty_like(u)
        xx = np.empty_like(u)
        _token_shift(u, array(state["att_shift"]), array(att.time_maa_x), dx, xx)
        lora = np.empty((rows, 5 * mix_rank), dtype)
        _matmul(xx, array(att.time_maa_w1), lora, True)
        mus = (
            array(att.time_maa_w),
            array(att.time_maa_k),
            array(att.time_maa_v),
            array(att.time_maa_r),
            array(att.time_maa_g),
        )
        mixed = np.empty((5, rows, width), dtype)
        _ddlerp(u, dx, lora, array(att.time_maa_w2), mus, mixed)
        h_w, h_k, h_v, h_r, h_g = mixed
        hidden = np.empty((rows, decay_rank), dtype)
        _matmul(h_w, array(att.time_decay_w1), hidden, True)
        decay = np.empty_like(u)
        _matmul(hidden, array(att.time_decay_w2), decay, False)
        z = np.empty_like(u)
        _wkv(
            project(h_r, att.receptance),
            project(h_k, att.key),
            project(h_v, att.value),
            array(att.time_decay),
            decay,
            array(att.time_faaaa),
            array(state["wkv"]),
            project(h_g, att.gate),
            array(att.ln_x.weight),
            array(att.ln_x.bias),
            att.ln_x.eps,
            z,
        )
        if ffn is None:
            project(z, att.output, x)
            return state
        a = project(z, att.output)
        c_in = np.empty_like(u)
        _sum(u, a, c_in)
        c = np.empty_like(u)
        norm(c_in, array(mixer.ln2.weight), array(mixer.ln2.bias), mixer.ln2.eps, True, c)
        c_k, c_r = np.empty_like(u), np.empty_like(u)
        _channel_shift(
            c, array(state["ffn_shift"]), array(ffn.time_maa_k), array(ffn.time_maa_r), c_k, c_r
        )
        key = project(c_k, ffn.key)
        _relu_square(key)
        _channel_out(x, a, project(c_r, ffn.receptance), project(key, ffn.value))
        return state

    return step
