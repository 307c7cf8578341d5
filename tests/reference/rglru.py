"""Float64 reference of Hawk's recurrent block (RG-LRU), a plain loop from the paper's equations.

Per token: gate g = gelu_tanh(W_y x + b_y); u = W_x x + b_x; a causal depthwise conv over the
last K values of u; per head h the gates r = sigmoid(c_h W_a[h] + b_a[h]) and
i = sigmoid(c_h W_i[h] + b_i[h]); a = exp(-8 r softplus(Lambda)) (2a - 1 with negative
eigenvalues); h = a h + sqrt(1 - a^2) (i c), except at position 0 where a = 0 and the
multiplier is 1; y = W_out (h g) + b_out.
"""

from __future__ import annotations

import math

import torch

from tests.reference.formulas import sigmoid
from tests.reference.registry import reference


def _softplus(u: torch.Tensor) -> torch.Tensor:
    return torch.log(1.0 + torch.exp(u))


def _gelu_tanh(u: torch.Tensor) -> torch.Tensor:
    return 0.5 * u * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (u + 0.044715 * u**3)))


@reference("rglru", n_heads=2, lru_width=12, conv_width=3)
@reference("rglru", variant="negative", n_heads=2, conv_width=4, negative_eigenvalues=True)
def run(layer, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    lru = layer.rg_lru
    heads, bw = lru.n_heads, lru.block_width
    w_conv = layer.conv_1d.weight[:, 0, :]  # (N, K): w_conv[:, K-1] multiplies the newest input
    window = [state["conv"][:, j] for j in range(state["conv"].shape[1])]  # oldest first
    h, pos = state["h"], state["pos"]
    ys = []
    for t in range(x.shape[1]):
        x_t = x[:, t]
        g = _gelu_tanh(x_t @ layer.linear_y.weight.T + layer.linear_y.bias)
        window.append(x_t @ layer.linear_x.weight.T + layer.linear_x.bias)
        c = layer.conv_1d.bias + sum(w_conv[:, j] * window[j] for j in range(len(window)))
        window = window[1:]
        r_parts, i_parts = [], []
        for head in range(heads):
            c_h = c[:, head * bw : (head + 1) * bw]
            r_parts.append(
                sigmoid(c_h @ lru.recurrent_gate_weight[head] + lru.recurrent_gate_bias[head])
            )
            i_parts.append(sigmoid(c_h @ lru.input_gate_weight[head] + lru.input_gate_bias[head]))
        r, i = torch.cat(r_parts, dim=1), torch.cat(i_parts, dim=1)
        a = torch.exp(-8.0 * r * _softplus(lru.recurrent_param))
        if layer.negative_eigenvalues:
            a = 2.0 * a - 1.0
        multiplier = torch.sqrt(1.0 - a * a)
        start = (pos == 0)[:, None]
        a = torch.where(start, torch.zeros_like(a), a)
        multiplier = torch.where(start, torch.ones_like(multiplier), multiplier)
        h = a * h + multiplier * (i * c)
        ys.append((h * g) @ layer.linear_out.weight.T + layer.linear_out.bias)
        pos = pos + 1
    conv = torch.stack(window, dim=1) if window else state["conv"][:, :0].clone()
    return torch.stack(ys, dim=1), {"conv": conv, "h": h, "pos": pos}
