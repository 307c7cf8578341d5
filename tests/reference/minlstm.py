"""Float64 reference recurrence of minLSTM, a plain loop written from the paper's equations."""

from __future__ import annotations

import torch

from tests.reference.formulas import sigmoid
from tests.reference.registry import reference


@reference("minlstm")
@reference("minlstm", variant="expand", expand=1.5)
@reference("minlstm", variant="negative", negative_eigenvalues=True)
def run(layer, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f_t = sigmoid(W_f x_t + b_f), i_t = sigmoid(W_i x_t + b_i), h~_t = W_h x_t + b_h;
    f'_t = f_t / (f_t + i_t), i'_t = i_t / (f_t + i_t); h_t = f'_t h_{t-1} + i'_t h~_t;
    y_t = W_o h_t when d_hidden != d_model, else y_t = h_t.

    With negative_eigenvalues the transition f'_t becomes 2 f'_t - 1 (Grazzi et al.).
    """
    n = layer.d_hidden
    weight, bias = layer.to_gate_hidden.weight, layer.to_gate_hidden.bias
    w_f, w_i, w_h = weight[:n], weight[n : 2 * n], weight[2 * n :]
    b_f, b_i, b_h = bias[:n], bias[n : 2 * n], bias[2 * n :]
    h = state
    ys = []
    for t in range(x.shape[1]):
        x_t = x[:, t]
        f = sigmoid(x_t @ w_f.T + b_f)
        i = sigmoid(x_t @ w_i.T + b_i)
        h_tilde = x_t @ w_h.T + b_h
        f_norm, i_norm = f / (f + i), i / (f + i)
        a = 2.0 * f_norm - 1.0 if layer.negative_eigenvalues else f_norm
        h = a * h + i_norm * h_tilde
        ys.append(h @ layer.out_proj.weight.T if layer.out_proj is not None else h)
    return torch.stack(ys, dim=1), h
