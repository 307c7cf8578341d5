"""Float64 reference recurrence of ParaGRU, a plain loop written from the paper's equations."""

from __future__ import annotations

import torch

from tests.reference.formulas import linear, sigmoid
from tests.reference.registry import reference


@reference("paragru")
@reference("paragru", variant="expand", expand=1.5)
@reference("paragru", variant="clip", jacobian_clip=0.5)
def run(layer, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """With (g_z, g_r, g_n) = W x_t + b and diagonal recurrent weights (a_z, a_r, a_n):
    z = sigmoid(a_z h + g_z), r = sigmoid(a_r h + g_r), n = tanh(a_n (r h) + g_n),
    h_t = (1 - z) h_{t-1} + z n; y_t = W_o h_t when d_hidden != d_model, else h_t.
    """
    n_hidden = layer.d_hidden
    a_z, a_r, a_n = layer.recurrent
    h = state
    ys = []
    for t in range(x.shape[1]):
        g = linear(layer.in_proj, x[:, t])
        g_z, g_r, g_n = g[:, :n_hidden], g[:, n_hidden : 2 * n_hidden], g[:, 2 * n_hidden :]
        z = sigmoid(a_z * h + g_z)
        r = sigmoid(a_r * h + g_r)
        n = torch.tanh(a_n * (r * h) + g_n)
        h = (1.0 - z) * h + z * n
        ys.append(h @ layer.out_proj.weight.T if layer.out_proj is not None else h)
    return torch.stack(ys, dim=1), h
