"""Fused decode step of Hawk's RG-LRU block (statewise.layers.rglru.RGLRUBlock), one row at a
time, as the layer's ``_step`` computes it. Width N = lru_width, H heads of width N / H,
conv kernel K, state {"conv": the last K-1 inputs u, "h", "pos": tokens seen}::

    g = gelu_tanh(W_y x + b_y),   u = W_x x + b_x
    c = (u w_{K-1} + sum_{j<K-1} conv[j] w_j) + b_c;   conv <- (conv[1:], u)
    r = sigmoid(c_h W_a[h] + b_a[h]),   i = sigmoid(c_h W_i[h] + b_i[h])   per head h,
                                                      the block multiplying from the right
    log a = r * (-8 softplus(Lambda))
    a = exp(log a),        1 - a^2 = -expm1(2 log a)
      (negative_eigenvalues: e = exp(log a), a = 2 e - 1, 1 - a^2 = -4 e expm1(log a))
    at a document start (pos == 0): h_prev = 0 and 1 - a^2 = 1   (the layer's ``_starts``)
    h = a * h_prev + sqrt(1 - a^2) * (i * c),   pos <- pos + 1
    y = W_out (h * g) + b_out
"""

from __future__ import annotations

import math

import numba
import numpy as np

from statewise.infer.fused.decoder import Stepper, array, project, register_stepper
from statewise.kernels.decode import conv_step, empty_bias, mlp_activation, sigmoid, softplus
from statewise.layers.rglru import GATE_SCALE, RGLRUBlock
from statewise.ops.tree import State

_GELU_TANH = 1  # decode.mlp_activation's kind for gelu_tanh(gate) * up


@numba.njit(cache=True)
def _block_gate(c, weight, out):
    """out[b, h*bw + j] = sum_i c[b, h*bw + i] weight[h, i, j] (the block from the right).
    Each weight row is read once for all rows; the inner loop runs over j, contiguous, so
    it vectorises, and every row's sum still runs over i in order."""
    heads, width, _ = weight.shape
    rows = c.shape[0]
    out[:] = 0.0
    for h in range(heads):
        off = h * width
        for i in range(width):
            w_row = weight[h, i]
            for b in range(rows):
                ci = c[b, off + i]
                acc = out[b, off : off + width]
                for j in range(width):
                    acc[j] += ci * w_row[j]


@numba.njit(cache=True)
def _recurrence(c, r_pre, r_bias, i_pre, i_bias, lam, scale, negative, h, pos):
    """The gates' sigmoids, a and sqrt(1 - a^2), the document start and h's update, per row;
    pos += 1. The biases are (H, bw), flattened."""
    rows, width = h.shape
    rate = np.empty(width, dtype=np.float64)
    for j in range(width):
        rate[j] = -scale * softplus(lam[j])
    for b in range(rows):
        start = pos[b] == 0
        for j in range(width):
            r = sigmoid(r_pre[b, j] + r_bias[j])
            i = sigmoid(i_pre[b, j] + i_bias[j])
            log_a = r * rate[j]
            if negative:
                e = math.exp(log_a)
                a = 2.0 * e - 1.0
                one_minus_a2 = -4.0 * e * math.expm1(log_a)
            else:
                a = math.exp(log_a)
                one_minus_a2 = -math.expm1(2.0 * log_a)
            if start:  # h_prev = 0, sqrt(1 - a^2) = 1
                h[b, j] = i * c[b, j]
            else:
                h[b, j] = a * h[b, j] + math.sqrt(one_minus_a2) * (i * c[b, j])
        pos[b] += 1


@register_stepper(RGLRUBlock)
def rglru_stepper(mixer: RGLRUBlock) -> Stepper:
    """The fused step of an RG-LRU block (see the module docstring)."""
    lru, conv = mixer.rg_lru, mixer.conv_1d

    def step(u: np.ndarray, state: State, x: np.ndarray) -> State:
        gate = project(u, mixer.linear_y)
        inputs = project(u, mixer.linear_x)
        c = np.empty_like(inputs)
        conv_bias = array(conv.bias) if conv.bias is not None else empty_bias(u.dtype)
        conv_step(array(state["conv"]), inputs, array(conv.weight)[:, 0], conv_bias, c)
        r_pre, i_pre = np.empty_like(c), np.empty_like(c)
        _block_gate(c, array(lru.recurrent_gate_weight), r_pre)
        _block_gate(c, array(lru.input_gate_weight), i_pre)
        h = array(state["h"])
        _recurrence(
            c,
            r_pre,
            array(lru.recurrent_gate_bias).reshape(-1),
            i_pre,
            array(lru.input_gate_bias).reshape(-1),
            array(lru.recurrent_param),
            GATE_SCALE,
            mixer.negative_eigenvalues,
            h,
            array(state["pos"]),
        )
        gated = np.empty_like(h)
        mlp_activation(h, gate, _GELU_TANH, gated)
        project(gated, mixer.linear_out, x)
        return state

    return step
