"""Fused decode step of minGRU (statewise.layers.mingru), one row at a time:

z = sigmoid(g),  a = 1 - z = sigmoid(-g)   (tanh(-g / 2) with negative eigenvalues)
h = a * h + z * h~                          (g, h~) = W x + b
y = W_o h  (or h itself when d_hidden == d_model)
"""

from __future__ import annotations

import math

import numba
import numpy as np

from statewise.infer.fused.decoder import array, project, register_stepper
from statewise.kernels.decode import add, sigmoid
from statewise.layers.mingru import MinGRU
from statewise.ops.tree import State


@numba.njit(cache=True)
def _update(gate_hidden, h, negative_eigenvalues):
    rows, width = h.shape
    for b in range(rows):
        for j in range(width):
            g = gate_hidden[b, j]
            a = math.tanh(-0.5 * g) if negative_eigenvalues else sigmoid(-g)
            h[b, j] = a * h[b, j] + sigmoid(g) * gate_hidden[b, width + j]


@register_stepper(MinGRU)
def mingru_stepper(mixer: MinGRU):
    def step(u: np.ndarray, state: State, x: np.ndarray) -> State:
        h = array(state)
        _update(project(u, mixer.to_gate_hidden), h, mixer.negative_eigenvalues)
        if mixer.out_proj is not None:
            project(h, mixer.out_proj, x)
        else:
            add(x, h)
        return state

    return step
