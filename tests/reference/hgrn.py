"""Float64 reference recurrence of HGRN (real form of flash-linear-attention), a plain loop."""

from __future__ import annotations

import torch

from tests.reference.formulas import sigmoid
from tests.reference.registry import reference


def _silu(u: torch.Tensor) -> torch.Tensor:
    return u * sigmoid(u)


def _rms_norm(u: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return u / torch.sqrt((u * u).mean(dim=-1, keepdim=True) + eps) * weight


# layer 1 of 3: a non-zero lower bound gamma = 1/3; d_hidden != d_model exercises the shapes
@reference("hgrn", d_hidden=6, layer_index=1, n_layers=3)
@reference("hgrn", variant="first", layer_index=0, n_layers=2)
@reference("hgrn", variant="negative", d_hidden=6, layer_index=2, n_layers=3,
           negative_eigenvalues=True)  # fmt: skip
def run(layer, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gamma = layer_index / n_layers; lambda_t = gamma + (1 - gamma) sigmoid(W_f x_t);
    h_t = lambda_t h_{t-1} + (1 - lambda_t) silu(W_i x_t);
    y_t = W_o (RMSNorm(h_t) * silu(W_g x_t)).

    With negative_eigenvalues the transition lambda_t becomes 2 lambda_t - 1 (Grazzi et al.),
    the input weight stays 1 - lambda_t.
    """
    gamma = layer.layer_index / layer.n_layers
    w_i, w_f, w_g = layer.i_proj.weight, layer.f_proj.weight, layer.g_proj.weight
    h = state
    ys = []
    for t in range(x.shape[1]):
        x_t = x[:, t]
        lam = gamma + (1.0 - gamma) * sigmoid(x_t @ w_f.T)
        a = 2.0 * lam - 1.0 if layer.negative_eigenvalues else lam
        h = a * h + (1.0 - lam) * _silu(x_t @ w_i.T)
        o = _rms_norm(h, layer.g_norm.weight, layer.g_norm.eps) * _silu(x_t @ w_g.T)
        ys.append(o @ layer.o_proj.weight.T)
    return torch.stack(ys, dim=1), h
