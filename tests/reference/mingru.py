"""Float64 reference recurrence of minGRU, a plain loop written from the paper's equations."""

from __future__ import annotations

import torch

from tests.reference.formulas import sigmoid
from tests.reference.registry import reference


@reference("mingru")
@reference("mingru", variant="expand", expand=1.5)
@reference("mingru", variant="negative", negative_eigenvalues=True)
def run(layer, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z_t = sigmoid(W_z x_t + b_z), h~_t = W_h x_t + b_h, h_t = (1 - z_t) h_{t-1} + z_t h~_t,
    y_t = W_o h_t when d_hidden != d_model, else y_t = h_t.

    With negative_eigenvalues the transition 1 - z_t becomes 2 (1 - z_t) - 1 (Grazzi et al.).
    """
    n = layer.d_hidden
    weight, bias = layer.to_gate_hidden.weight, layer.to_gate_hidden.bias
    w_z, w_h = weight[:n], weight[n:]
    b_z, b_h = bias[:n], bias[n:]
    h = state
    ys = []
    for t in range(x.shape[1]):
        x_t = x[:, t]
        z = sigmoid(x_t @ w_z.T + b_z)
        h_tilde = x_t @ w_h.T + b_h
        a = 1.0 - z
        if layer.negative_eigenvalues:
            a = 2.0 * a - 1.0
        h = a * h + z * h_tilde
        ys.append(h @ layer.out_proj.weight.T if layer.out_proj is not None else h)
    return torch.stack(ys, dim=1), h
