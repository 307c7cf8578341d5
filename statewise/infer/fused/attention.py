"""Fused decode step of causal softmax attention (statewise.layers.attention.Attention),
local (sliding window) or global, one row at a time, as the layer's ``_step`` computes it.

H query heads, H_kv key/value heads, G = H / H_kv, head width d, cache capacity C (window - 1
with a window, max_len without one); state {"k", "v": (B, C, H_kv, d) right-aligned (newest
last, slots that hold no token zero), "pos": (B,) tokens seen}; p = pos, m = min(p, C) the
filled slots C - m .. C - 1::

    global attention: p + 1 > C raises ArgumentError (the layer's ``_check_capacity``)
    q = W_q u + b_q  (H, d),   k = W_k u + b_k,   v = W_v u + b_v   (H_kv, d)
    q, k rotated at p, per head (n = len(rotary_frequencies), angle_i = float64(p) freq_i
    in float64, cos and sin rounded to the weights' dtype; features 2n .. d-1 unchanged):
        x_i, x_{n+i} <- x_i cos_i - x_{n+i} sin_i,  x_{n+i} cos_i + x_i sin_i     i < n
    keys = (cache_k[C-m .. C-1], k), values likewise (m + 1 of them; the own key always)
    o_h = sum_s softmax_s(q_h . keys_s,j / sqrt(d)) values_s,j         j = h // G
    cache_k <- (cache_k[1:], k), cache_v <- (cache_v[1:], v);   p <- p + 1
    y = W_o (o_1 .. o_H) + b_o

A score q_h . key_s sums its features in order in the weights' dtype (see _scores for how
it vectorises), times 1 / sqrt(d); the scores go to float64 for the softmax (exp by
exp_block, vectorised), the weights are rounded to the dtype and o accumulates in it. The
cache shift moves only the filled slots (the empty ones are zero and stay so), so a step
costs O(m), not O(C) as the layer's torch.cat of the whole cache.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from statewise.errors import ArgumentError
from statewise.infer.fused.decoder import Stepper, array, project, register_stepper
from statewise.kernels.decode import exp_block
from statewise.layers.attention import Attention
from statewise.ops.tree import State


@numba.njit(cache=True)
def _rotate(x, head_dim, freqs, pos):
    """Rotary embedding of every head of x (B, heads d) at position pos[b], in place."""
    rows, width = x.shape
    n = freqs.shape[0]
    for b in range(rows):
        for i in range(n):
            angle = float(pos[b]) * freqs[i]
            c = x.dtype.type(math.cos(angle))
            s = x.dtype.type(math.sin(angle))
            for h0 in range(0, width, head_dim):
                x1, x2 = x[b, h0 + i], x[b, h0 + n + i]
                x[b, h0 + i] = x1 * c - x2 * s
                x[b, h0 + n + i] = x2 * c + x1 * s


@numba.njit(cache=True)
def _dot(x, y):
    """sum_f x[f] y[f], in order from f = 0."""
    total = x.dtype.type(0)
    for f in range(x.shape[0]):
        total += x[f] * y[f]
    return total


@numba.njit(cache=True)
def _scores(q_h, cache, b, first, j, out):
    """out[s] = q_h . cache[b, first + s, j] for the filled slots s < C - first, each summed
    over the features in order, as _dot. numba vectorises no loop with a reduction inside
    (no fastmath, and its SLP vectoriser is off), so one dot product at a time is a chain
    of d dependent adds; eight slots at a time are eight independent chains (measured,
    float32, d 64, 1000 slots: 11 µs instead of 32; d 128: 22 instead of 72), with the
    same bits. The cache goes in whole: a view of its rows such as cache[b, first:, j] is
    typed as strided, and the loops over it ran 2x slower."""
    filled = cache.shape[1] - first
    zero = q_h.dtype.type(0)
    s = 0
    while s + 8 <= filled:
        k0, k1 = cache[b, first + s, j], cache[b, first + s + 1, j]
        k2, k3 = cache[b, first + s + 2, j], cache[b, first + s + 3, j]
        k4, k5 = cache[b, first + s + 4, j], cache[b, first + s + 5, j]
        k6, k7 = cache[b, first + s + 6, j], cache[b, first + s + 7, j]
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = zero
        for f in range(q_h.shape[0]):
            qf = q_h[f]
            a0 += qf * k0[f]
            a1 += qf * k1[f]
            a2 += qf * k2[f]
            a3 += qf * k3[f]
            a4 += qf * k4[f]
            a5 += qf * k5[f]
            a6 += qf * k6[f]
            a7 += qf * k7[f]
        out[s], out[s + 1], out[s + 2], out[s + 3] = a0, a1, a2, a3
        out[s + 4], out[s + 5], out[s + 6], out[s + 7] = a4, a5, a6, a7
        s += 8
    for t in range(s, filled):
        out[t] = _dot(q_h, cache[b, first + t, j])


@numba.njit(cache=True)
def _mix(p, inv, cache, b, first, j, out):
    """out += sum_s (p[s] inv) cache[b, first + s, j] over the filled slots, the weights
    rounded to out's dtype, added slot after slot; four slots per pass over out (the same
    sums in the same order)."""
    filled = cache.shape[1] - first
    width = out.shape[0]
    s = 0
    while s + 4 <= filled:
        w0, w1 = out.dtype.type(p[s] * inv), out.dtype.type(p[s + 1] * inv)
        w2, w3 = out.dtype.type(p[s + 2] * inv), out.dtype.type(p[s + 3] * inv)
        v0, v1 = cache[b, first + s, j], cache[b, first + s + 1, j]
        v2, v3 = cache[b, first + s + 2, j], cache[b, first + s + 3, j]
        for f in range(width):
            out[f] = out[f] + w0 * v0[f] + w1 * v1[f] + w2 * v2[f] + w3 * v3[f]
        s += 4
    for t in range(s, filled):
        w = out.dtype.type(p[t] * inv)
        v_t = cache[b, first + t, j]
        for f in range(width):
            out[f] += w * v_t[f]


@numba.njit(cache=True)
def _attend(q, k, v, k_cache, v_cache, pos, scale, out):
    """out (B, H d) = each query head's softmax attention over its row's filled cache slots
    and the row's own key; q (B, H d), k and v (B, H_kv d), caches (B, C, H_kv, d)."""
    rows = q.shape[0]
    capacity, kv_heads, head_dim = k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]
    heads = q.shape[1] // head_dim
    group = heads // kv_heads
    most = 0
    for b in range(rows):
        most = max(most, min(pos[b], capacity))
    size = heads * (most + 1)
    scores = np.empty(size, dtype=np.float64)
    weights = np.empty(size, dtype=np.float64)
    bits = np.empty(size, dtype=np.int64)
    partial = np.empty(most, dtype=q.dtype)
    scale = q.dtype.type(scale)
    for b in range(rows):
        filled = min(pos[b], capacity)
        first = capacity - filled
        keys = filled + 1  # and the own key, last
        for h in range(heads):
            j = h // group
            q_h = q[b, h * head_dim : (h + 1) * head_dim]
            _scores(q_h, k_cache, b, first, j, partial)
            row = scores[h * keys : (h + 1) * keys]
            for s in range(filled):
                row[s] = partial[s] * scale
            row[filled] = _dot(q_h, k[b, j * head_dim : (j + 1) * head_dim]) * scale
            top = row[0]
            for s in range(1, keys):
                top = max(top, row[s])
            for s in range(keys):
                row[s] -= top
        used = heads * keys
        exp_block(scores[:used], weights[:used], bits[:used])
        for h in range(heads):
            j = h // group
            p = weights[h * keys : (h + 1) * keys]
            total = 0.0
            for s in range(keys):
                total += p[s]
            inv = 1.0 / total
            o_h = out[b, h * head_dim : (h + 1) * head_dim]
            w = q.dtype.type(p[filled] * inv)
            v_own = v[b, j * head_dim : (j + 1) * head_dim]
            for f in range(head_dim):
                o_h[f] = w * v_own[f]
            _mix(p, inv, v_cache, b, first, j, o_h)


@numba.njit(cache=True)
def _shift(cache, new, b, filled):
    """Row b of cache (B, C, H_kv, d) drops its oldest filled slot (or the empty one before
    them) and takes new[b] (H_kv d) as the newest. Slots before the filled ones are zero
    and are left alone."""
    capacity, kv_heads, head_dim = cache.shape[1], cache.shape[2], cache.shape[3]
    for s in range(max(capacity - filled, 1), capacity):
        for j in range(kv_heads):
            src, dst = cache[b, s, j], cache[b, s - 1, j]
            for f in range(head_dim):
                dst[f] = src[f]
    for j in range(kv_heads):
        dst = cache[b, capacity - 1, j]
        for f in range(head_dim):
            dst[f] = new[b, j * head_dim + f]


@numba.njit(cache=True)
def _push(k_cache, v_cache, k, v, pos):
    """Each row's caches take the new k, v (see _shift); pos += 1."""
    rows, capacity = k_cache.shape[0], k_cache.shape[1]
    for b in range(rows):
        if capacity > 0:
            filled = min(pos[b], capacity)
            _shift(k_cache, k, b, filled)
            _shift(v_cache, v, b, filled)
        pos[b] += 1


@register_stepper(Attention)
def attention_stepper(mixer: Attention) -> Stepper:
    """The fused step of an attention layer (see the module docstring)."""
    freqs = mixer._freqs.numpy().copy()
    scale = mixer.head_dim**-0.5

    def step(u: np.ndarray, state: State, x: np.ndarray) -> State:
        pos = array(state["pos"])
        if not mixer.window and len(pos) and int(pos.max()) + 1 > mixer.capacity:
            raise ArgumentError(
                f"global attention keeps at most max_len={mixer.max_len} tokens in its KV "
                f"cache, but this step reaches {int(pos.max()) + 1}; build the layer with a "
                "larger max_len, or use a window"
            )
        q = project(u, mixer.q_proj)
        k = project(u, mixer.k_proj)
        v = project(u, mixer.v_proj)
        if len(freqs):
            _rotate(q, mixer.head_dim, freqs, pos)
            _rotate(k, mixer.head_dim, freqs, pos)
        k_cache, v_cache = array(state["k"]), array(state["v"])
        o = np.empty_like(q)
        _attend(q, k, v, k_cache, v_cache, pos, scale, o)
        _push(k_cache, v_cache, k, v, pos)
        project(o, mixer.o_proj, x)
        return state

    return step
