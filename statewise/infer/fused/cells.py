"""Fused decode step of the classic cells (statewise.layers.classic: LSTMMixer, GRUMixer,
RNNMixer), one row at a time, as statewise.ops.cells.cell_step computes it.

With u the block's normed input, h (and c) the state of width H = K heads of width d, the
gate rows laid out (head, gate, unit) and W_hh one (G*d, d) block per head (K = 1:
torch.nn's (G*H, H))::

    gi = W_ih u + b_ih                      (G*H)
    gh[k] = W_hh[k] h[k] + b_hh[k]          (G*d per head k)

    LSTM (gates i, f, g, o of pre = gi + gh):
        c = sigmoid(f) * c + sigmoid(i) * tanh(g),   h = sigmoid(o) * tanh(c)
    GRU (gates r, z, n; W_hn h + b_hn kept apart inside the reset gate):
        r = sigmoid(gi_r + gh_r),  z = sigmoid(gi_z + gh_z),  n = tanh(gi_n + r * gh_n)
        h = n + z * (h - n)
    RNN (RNNMixer's cell is rnn_tanh):  h = tanh(gi + gh)

    y = W_o h  (or h itself when hidden_size == d_model)

``weight_drop`` acts in training mode only, and the fused step runs in eval mode, so it
changes nothing here.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from statewise.infer.fused.decoder import Stepper, array, project, register_stepper
from statewise.kernels import decode
from statewise.kernels.decode import add, sigmoid
from statewise.layers.classic import GRUMixer, LSTMMixer, RNNMixer, _CellMixer
from statewise.ops.tree import State


@numba.njit(cache=True)
def _lstm_update(gi, gh, h, c):
    rows, width = h.shape
    heads, _, gate_rows = gh.shape
    d = width // heads
    for b in range(rows):
        for k in range(heads):
            base = gate_rows * k
            g_k = gh[k, b]
            for j in range(d):
                i = sigmoid(gi[b, base + j] + g_k[j])
                f = sigmoid(gi[b, base + d + j] + g_k[d + j])
                g = math.tanh(gi[b, base + 2 * d + j] + g_k[2 * d + j])
                o = sigmoid(gi[b, base + 3 * d + j] + g_k[3 * d + j])
                unit = k * d + j
                c_new = f * c[b, unit] + i * g
                c[b, unit] = c_new
                h[b, unit] = o * math.tanh(c_new)


@numba.njit(cache=True)
def _gru_update(gi, gh, h):
    rows, width = h.shape
    heads, _, gate_rows = gh.shape
    d = width // heads
    for b in range(rows):
        for k in range(heads):
            base = gate_rows * k
            g_k = gh[k, b]
            for j in range(d):
                r = sigmoid(gi[b, base + j] + g_k[j])
                z = sigmoid(gi[b, base + d + j] + g_k[d + j])
                n = math.tanh(gi[b, base + 2 * d + j] + r * g_k[2 * d + j])
                unit = k * d + j
                h[b, unit] = n + z * (h[b, unit] - n)


@numba.njit(cache=True)
def _rnn_update(gi, gh, h):
    rows, width = h.shape
    heads = gh.shape[0]
    d = width // heads
    for b in range(rows):
        for k in range(heads):
            g_k = gh[k, b]
            for j in range(d):
                unit = k * d + j
                h[b, unit] = math.tanh(gi[b, unit] + g_k[j])


def hidden_term(h: np.ndarray, weight_hh: np.ndarray, bias_hh: np.ndarray) -> np.ndarray:
    """W_hh h + b_hh for h (B, H), head-major: (K, B, G*d), K = 1 for torch.nn's (G*H, H)
    weight, else one ``decode.linear`` per head of the (K, G*d, d) weight.

    Each head's rows go in as a C-contiguous (B, d) array (h copied head-major when K > 1):
    on the strided view h[:, k*d:(k+1)*d], numba compiles ``linear`` for an 'A' layout,
    whose sums round differently from the 'C' version that a single row's (1, d) view
    gets, which would break batch invariance."""
    weight_hh = weight_hh.reshape(-1, *weight_hh.shape[-2:])
    heads, gate_rows, width = weight_hh.shape
    rows = h.shape[0]
    h_heads = np.ascontiguousarray(h.reshape(rows, heads, width).transpose(1, 0, 2))
    bias_heads = bias_hh.reshape(heads, gate_rows)
    out = np.empty((heads, rows, gate_rows), dtype=h.dtype)
    for k in range(heads):
        decode.linear(h_heads[k], weight_hh[k], bias_heads[k], out[k], False)
    return out


@register_stepper(LSTMMixer, GRUMixer, RNNMixer)
def cell_stepper(mixer: _CellMixer) -> Stepper:
    """The fused step of an LSTM, GRU or RNN mixer (see the module docstring)."""
    cell = mixer.cell

    def step(u: np.ndarray, state: State, x: np.ndarray) -> State:
        h = array(state[0] if cell == "lstm" else state)
        gh = hidden_term(h, array(mixer.weight_hh), array(mixer.bias_hh))
        weight_ih = array(mixer.weight_ih)
        gi = np.empty((u.shape[0], weight_ih.shape[0]), dtype=u.dtype)
        decode.linear(u, weight_ih, array(mixer.bias_ih), gi, False)
        if cell == "lstm":
            _lstm_update(gi, gh, h, array(state[1]))
        elif cell == "gru":
            _gru_update(gi, gh, h)
        else:
            _rnn_update(gi, gh, h)
        if mixer.out_proj is not None:  # a C-contiguous h, for linear's batch invariance
            project(np.ascontiguousarray(h), mixer.out_proj, x)
        else:
            add(x, h)
        return state

    return step
