"""Float64 reference of CfC (Hasani et al. 2022), a plain loop written from the paper's
closed-form update (as ncps's CfCCell computes it)."""

from __future__ import annotations

import math

import torch

from tests.reference.formulas import linear, sigmoid
from tests.reference.registry import reference


def backbone_activation(name: str, v: torch.Tensor) -> torch.Tensor:
    if name == "lecun_tanh":
        return 1.7159 * torch.tanh(0.666 * v)
    if name == "tanh":
        return torch.tanh(v)
    if name == "relu":
        return torch.clamp(v, min=0.0)
    if name == "silu":
        return v * sigmoid(v)
    if name == "gelu":
        return 0.5 * v * (1.0 + torch.erf(v / math.sqrt(2.0)))
    raise NotImplementedError(name)


@reference("cfc", backbone_units=8)
@reference("cfc", variant="no_gate", kind="no_gate", backbone_units=8, backbone_layers=2)
@reference("cfc", variant="pure", kind="pure", hidden_size=6, activation="silu", backbone_units=8)
@reference("cfc", variant="no_backbone", backbone_layers=0, hidden_size=5, backbone_units=8)
def run(layer, x: torch.Tensor, state: torch.Tensor, dt: torch.Tensor | None = None):
    """For each t, with b the backbone of [x_t, h] and ts = dt_t (1 without dt):
    default: h = tanh(W1 b)(1 - s) + s tanh(W2 b), s = sigmoid(Wa b ts + Wb b);
    no_gate: h = tanh(W1 b) + s tanh(W2 b); pure: h = -A exp(-ts (|w_tau| + |W1 b|)) W1 b + A;
    y = W_o h when hidden_size != d_model."""
    h, ys = state, []
    for t in range(x.shape[1]):
        b = torch.cat([x[:, t], h], dim=-1)
        for layer_k in layer.backbone:
            b = backbone_activation(layer.activation, linear(layer_k, b))
        ts = 1.0 if dt is None else dt[:, t : t + 1]
        ff1 = linear(layer.ff1, b)
        if layer.kind == "pure":
            h = -layer.A * torch.exp(-ts * (layer.w_tau.abs() + ff1.abs())) * ff1 + layer.A
        else:
            s = sigmoid(linear(layer.time_a, b) * ts + linear(layer.time_b, b))
            first, second = torch.tanh(ff1), torch.tanh(linear(layer.ff2, b))
            h = first + s * second if layer.kind == "no_gate" else first * (1 - s) + s * second
        ys.append(h if layer.out_proj is None else linear(layer.out_proj, h))
    return torch.stack(ys, dim=1), h
