"""Fused decode step of the mLSTM (statewise.layers.mlstm.MLSTM), one row at a time.

With x the block's normed input, H heads, key width d_k and value width d_v per head, and
per head the stabilised state (C (d_k, d_v), n (d_k), m) of statewise.ops.mlstm:

    q = W_q x,   k = W_k x / sqrt(d_k),   v = W_v x           (per head)
    i~ = w_i . x + b_i,   f~ = w_f . x + b_f                  (c tanh(. / c) with a soft cap c)
    log i = i~,   log|f| = logsigmoid(f~),  s = +1
        (negative eigenvalues: log|f| = log(-expm1(-|f~|)) - softplus(-|f~|),
         s = -1 if f~ < 0 else +1, i.e. f = tanh(f~ / 2))
    m' = max(log|f| + m, log i)
    f' = s exp(log|f| + m - m'),   i' = exp(log i - m')
    C <- f' C + (i' k)^T v,   n <- f' n + i' k,   m <- m'
    h = q C / max(|q . n|, exp(-m'))
    y = W_out (sigmoid(W_o x) * GroupNorm_H(h) * norm_weight)   (GroupNorm without affine)

The head's state update, its readout q C, the norm and the output gate are one pass of
:func:`_cell` per row and head, its inner loops over the contiguous d_v axis.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from statewise.infer.fused.decoder import Stepper, array, project, register_stepper
from statewise.kernels.decode import moments, sigmoid, softplus
from statewise.layers.mlstm import MLSTM
from statewise.ops.tree import State


@numba.njit(cache=True)
def _log_gates(i_pre, f_pre, cap, negative_eigenvalues):
    """(log i, log|f|, sign f) from the gate pre-activations, as MLSTM._gates; cap <= 0 is
    no soft cap."""
    if cap > 0.0:
        i_pre = cap * math.tanh(i_pre / cap)
        f_pre = cap * math.tanh(f_pre / cap)
    if negative_eigenvalues:
        a = abs(f_pre)
        log_f = math.log(-math.expm1(-a)) - softplus(-a)
        return i_pre, log_f, -1.0 if f_pre < 0.0 else 1.0
    # logsigmoid(f) = min(f, 0) - log1p(exp(-|f|))
    return i_pre, min(f_pre, 0.0) - math.log1p(math.exp(-abs(f_pre))), 1.0


@numba.njit(cache=True)
def _cell(q, k, v, i_pre, f_pre, k_scale, cap, negative_eigenvalues, c, n, m, w, eps, o, z):
    """One stabilised step of every head, updating (C, n, m) in place, and the readout
    z = sigmoid(o) * GroupNorm(h) * w (B, H d_v) for the output projection."""
    rows, heads, d_k, d_v = c.shape
    for b in range(rows):
        for hd in range(heads):
            log_i, log_f, sign = _log_gates(i_pre[b, hd], f_pre[b, hd], cap, negative_eigenvalues)
            m_old = m[b, hd]
            m_new = max(log_f + m_old, log_i)
            f_act = math.exp(log_f + m_old - m_new) * sign
            i_act = math.exp(log_i - m_new)
            lo_k, lo_v = hd * d_k, hd * d_v
            v_h = v[b, lo_v : lo_v + d_v]
            out = z[b, lo_v : lo_v + d_v]
            n_h = n[b, hd]
            for j in range(d_v):
                out[j] = 0.0
            den = 0.0
            for i in range(d_k):
                q_i = q[b, lo_k + i]
                ik = i_act * (k[b, lo_k + i] * k_scale)
                n_h[i] = f_act * n_h[i] + ik
                den += q_i * n_h[i]
                row = c[b, hd, i]
                for j in range(d_v):
                    row[j] = f_act * row[j] + ik * v_h[j]
                    out[j] += q_i * row[j]
            m[b, hd] = m_new
            limit = max(abs(den), math.exp(-m_new))
            for j in range(d_v):
                out[j] /= limit
            mean, scale = moments(out, eps)
            for j in range(d_v):
                out[j] = sigmoid(o[b, lo_v + j]) * ((out[j] - mean) * scale * w[lo_v + j])


@register_stepper(MLSTM)
def mlstm_stepper(mixer: MLSTM) -> Stepper:
    k_scale = mixer.d_k**-0.5
    cap = 0.0 if mixer.gate_soft_cap is None else float(mixer.gate_soft_cap)

    def step(u: np.ndarray, state: State, x: np.ndarray) -> State:
        z = np.empty((u.shape[0], mixer.n_heads * mixer.d_v), u.dtype)
        _cell(
            project(u, mixer.q_proj),
            project(u, mixer.k_proj),
            project(u, mixer.v_proj),
            project(u, mixer.i_proj),
            project(u, mixer.f_proj),
            k_scale,
            cap,
            mixer.negative_eigenvalues,
            array(state["C"]),
            array(state["n"]),
            array(state["m"]),
            array(mixer.norm_weight),
            mixer.norm_eps,
            project(u, mixer.o_proj),
            z,
        )
        project(z, mixer.out_proj, x)
        return state

    return step
