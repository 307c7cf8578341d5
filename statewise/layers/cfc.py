"""CfC, the closed-form continuous-time cell (Hasani et al. 2022, "Closed-form
continuous-time neural networks", Nature Machine Intelligence), as ncps's ``CfCCell``.

With z_t = [x_t, h_{t-1}] and a backbone of L layers b = phi(W_L ... phi(W_1 z_t + c_1) ... + c_L)
(phi: LeCun's tanh 1.7159 tanh(0.666 a) by default), per step of duration dt_t:

    default:  h_t = tanh(W_1 b) (1 - s_t) + s_t tanh(W_2 b),   s_t = sigmoid(W_a b dt_t + W_b b)
    no_gate:  h_t = tanh(W_1 b) + s_t tanh(W_2 b)
    pure:     h_t = -A exp(-dt_t (|w_tau| + |W_1 b|)) (W_1 b) + A      (the direct solution)

(every W above has a bias). s_t is the time gate: how far the state has moved from
tanh(W_1 b) towards tanh(W_2 b) after dt_t; dt_t is the time since the previous token
(``dt`` of the contract), 1 when not given, as in ncps. y_t = W_o h_t when the hidden size
differs from d_model, else h_t. The update is nonlinear in h, so the only mode is the loop
("recurrent"); a masked step carries the state.

Differences from ncps: no wiring (NCP sparsity) and no mixed-memory LSTM; the backbone
always exists (ncps allows backbone_layers = 0, where z feeds the heads directly: here
``backbone_layers=0`` does the same). ncps squeezes its ``timespans`` to (B,), which
broadcasts against (B, units) along the units axis; the cross-check in
tests/layers/test_cfc_ltc.py calls ncps's cell with dt as (B, 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError
from statewise.layers.checks import positive_int
from statewise.layers.continuous_time import ContinuousTimeCell
from statewise.layers.registry import register

CFC_KINDS = ("default", "no_gate", "pure")


def lecun_tanh(a: torch.Tensor) -> torch.Tensor:
    """1.7159 tanh(0.666 a) (LeCun 1998, ncps's default backbone activation)."""
    return 1.7159 * torch.tanh(0.666 * a)


BACKBONE_ACTIVATIONS = {
    "lecun_tanh": lecun_tanh,
    "tanh": torch.tanh,
    "relu": F.relu,
    "silu": F.silu,
    "gelu": F.gelu,
}


@register(
    "cfc",
    family="continuous-time",
    paper="Hasani et al. 2022, Closed-form continuous-time neural networks",
    state_size="d",
)
class CfC(ContinuousTimeCell):
    """CfC as a mixer; reads ``dt`` (time since the previous token, 1 when None).

    Args:
        d_model: input and output width D.
        hidden_size: units H of the state (default D); W_o (H -> D) exists when H != D.
        backbone_units, backbone_layers: the backbone MLP over [x_t, h_{t-1}] (ncps's
            defaults 128 and 1; 0 layers: no backbone).
        kind: "default", "no_gate" or "pure" (ncps's ``mode``).
        activation: the backbone's, one of BACKBONE_ACTIVATIONS.
        mode: "auto" or "recurrent" (the only one).

    State: h (B, H).
    """

    def __init__(
        self,
        d_model: int,
        hidden_size: int | None = None,
        backbone_units: int = 128,
        backbone_layers: int = 1,
        kind: str = "default",
        activation: str = "lecun_tanh",
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        self.hidden_size = positive_int(
            "hidden_size", d_model if hidden_size is None else hidden_size
        )
        if kind not in CFC_KINDS:
            raise ArgumentError(f"kind must be one of {CFC_KINDS}, got {kind!r}")
        if activation not in BACKBONE_ACTIVATIONS:
            raise ArgumentError(
                f"activation must be one of {tuple(BACKBONE_ACTIVATIONS)}, got {activation!r}"
            )
        if isinstance(backbone_layers, bool) or not isinstance(backbone_layers, int):
            raise ArgumentError(f"backbone_layers must be an int, got {backbone_layers!r}")
        if backbone_layers < 0:
            raise ArgumentError(f"backbone_layers must be >= 0, got {backbone_layers}")
        self.kind, self.activation = kind, activation
        width = d_model + self.hidden_size
        units = positive_int("backbone_units", backbone_units)
        self.backbone = nn.ModuleList(
            nn.Linear(width if i == 0 else units, units) for i in range(backbone_layers)
        )
        features = units if backbone_layers else width
        self.ff1 = nn.Linear(features, self.hidden_size)
        if kind == "pure":
            self.w_tau = nn.Parameter(torch.zeros(self.hidden_size))
            self.A = nn.Parameter(torch.ones(self.hidden_size))
        else:
            self.ff2 = nn.Linear(features, self.hidden_size)
            self.time_a = nn.Linear(features, self.hidden_size)
            self.time_b = nn.Linear(features, self.hidden_size)
        self.out_proj = (
            nn.Linear(self.hidden_size, d_model) if self.hidden_size != d_model else None
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """ncps's init: Xavier-uniform weight matrices, torch.nn's default biases."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
                nn.init.xavier_uniform_(module.weight)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, hidden_size={self.hidden_size}, "
            f"backbone={len(self.backbone)}x{self.ff1.in_features}, kind={self.kind!r}, "
            f"activation={self.activation!r}"
        )

    def _cell(
        self, x_t: torch.Tensor, h: torch.Tensor, dt: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = torch.cat([x_t, h], dim=-1)
        act = BACKBONE_ACTIVATIONS[self.activation]
        for layer in self.backbone:
            b = act(layer(b))
        ts = 1.0 if dt is None else dt.unsqueeze(-1)
        ff1 = self.ff1(b)
        if self.kind == "pure":
            h = -self.A * torch.exp(-ts * (self.w_tau.abs() + ff1.abs())) * ff1 + self.A
        else:
            gate = torch.sigmoid(self.time_a(b) * ts + self.time_b(b))
            ff1, ff2 = torch.tanh(ff1), torch.tanh(self.ff2(b))
            h = ff1 + gate * ff2 if self.kind == "no_gate" else ff1 * (1.0 - gate) + gate * ff2
        return (h if self.out_proj is None else self.out_proj(h)), h
