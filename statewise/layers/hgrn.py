"""HGRN (Qin et al. 2023, "Hierarchically Gated Recurrent Neural Network for Sequence
Modeling"), in the real form of flash-linear-attention (``fla/layers/hgrn.py``).

    lambda_t = gamma + (1 - gamma) * sigmoid(W_f x_t)     forget gate in (gamma, 1)
    c_t      = silu(W_i x_t)                              input
    h_t      = lambda_t * h_{t-1} + (1 - lambda_t) * c_t  diagonal linear in h
    y_t      = W_o (RMSNorm(h_t) * silu(W_g x_t))         norm, output gate, projection

gamma = gamma^k is the forget gate's lower bound for layer k (of n_layers): deeper layers
are forced to remember longer. The paper learns the bounds of all layers together, as a
cumulative softmax over layers (gamma^0 = 0, increasing with k); that needs one parameter
shared by every layer, which the mixer API (one independent module per block) cannot hold.
So here the bound is a fixed schedule, gamma^k = k / n_layers: exactly the value of the
paper's / fla's learned bound at its initialisation (softmax of zeros, exclusive cumsum).
The model passes ``layer_index`` and ``n_layers`` (statewise.models.block.make_mixer); a
standalone layer has layer_index = 0, n_layers = 1, i.e. no lower bound.

The recurrence h_t = a_t h_{t-1} + b_t, a_t = lambda_t, b_t = (1 - lambda_t) c_t, runs
through :func:`statewise.ops.scan.linear_recurrence` as a loop over time ("recurrent") or
a doubling scan ("scan"); 1 - lambda_t is computed as (1 - gamma) sigmoid(-W_f x_t).
Masked steps use a = 1, b = 0 (the state passes through unchanged).

Negative eigenvalues (Grazzi et al. 2025, ``negative_eigenvalues=True``): the transition
becomes 2 lambda_t - 1 in (2 gamma - 1, 1); the input term (1 - lambda_t) c_t is unchanged.

Differences from the paper: real (not complex) states, RMSNorm then a SiLU gate (fla)
instead of the paper's LayerNorm of a sigmoid-gated h; no short convolution (fla's
``use_short_conv`` defaults to off); no biases, as in fla.

auto mode is "recurrent": measured on this machine (torch 2.13, fp32, whole layer at
d_model 512, B 8, forward + backward, single-thread CPU time because the machine was
shared) recurrent 149 ms vs scan 287 ms at T 256 and 565 ms vs 1.45 s at T 1024; at B 1,
d_model 64 they are within 15%. See docs/models/hgrn.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError
from statewise.layers.checks import flag
from statewise.layers.mingru import DiagonalLinearMixer, hidden_width
from statewise.layers.registry import register


def lower_bound(layer_index: int, n_layers: int) -> float:
    """gamma^k = k / n_layers: the cumulative-softmax lower bound of HGRN at its init."""
    for name, value in (("layer_index", layer_index), ("n_layers", n_layers)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ArgumentError(f"{name} must be an int, got {value!r}")
    if n_layers < 1:
        raise ArgumentError(f"n_layers must be >= 1, got {n_layers}")
    if not 0 <= layer_index < n_layers:
        raise ArgumentError(f"layer_index must be in [0, n_layers={n_layers}), got {layer_index}")
    return layer_index / n_layers


@register(
    "hgrn",
    family="diagonal linear",
    paper="Qin et al. 2023, Hierarchically Gated Recurrent Neural Network",
    state_size="d",
)
class HGRN(DiagonalLinearMixer):
    """HGRN's token mixer: a gated diagonal linear recurrence with a depth-dependent floor.

    Args:
        d_model: input and output width D.
        expand: d_hidden = round(expand * d_model) when ``d_hidden`` is not given.
        d_hidden: width H of the recurrent state; overrides ``expand``.
        layer_index, n_layers: position of this layer in the stack; the forget gate's
            lower bound is layer_index / n_layers (see the module docstring).
        negative_eigenvalues: use the transition 2 lambda_t - 1 (Grazzi et al. 2025).
        norm_eps: epsilon of the RMSNorm.
        mode: "auto" (= "recurrent"), "recurrent" or "scan".

    State: h, a tensor (B, d_hidden). Parameters (fla's names): ``i_proj``, ``f_proj``,
    ``g_proj`` (Linear D -> H, no bias), ``g_norm`` (RMSNorm over H, with weight) and
    ``o_proj`` (Linear H -> D, no bias): 4 H D + H.
    """

    def __init__(
        self,
        d_model: int,
        expand: float = 1.0,
        d_hidden: int | None = None,
        layer_index: int = 0,
        n_layers: int = 1,
        negative_eigenvalues: bool = False,
        norm_eps: float = 1e-5,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        self.d_hidden = hidden_width(d_model, expand, d_hidden)
        self.lower_bound = lower_bound(layer_index, n_layers)
        self.layer_index, self.n_layers = layer_index, n_layers
        self.negative_eigenvalues = flag("negative_eigenvalues", negative_eigenvalues)
        self.i_proj = nn.Linear(d_model, self.d_hidden, bias=False)
        self.f_proj = nn.Linear(d_model, self.d_hidden, bias=False)
        self.g_proj = nn.Linear(d_model, self.d_hidden, bias=False)
        self.g_norm = nn.RMSNorm(self.d_hidden, eps=norm_eps)
        self.o_proj = nn.Linear(self.d_hidden, d_model, bias=False)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_hidden={self.d_hidden}, "
            f"lower_bound={self.lower_bound:g} (layer {self.layer_index} of {self.n_layers}), "
            f"negative_eigenvalues={self.negative_eigenvalues}, mode={self.mode!r}"
        )

    def _coefficients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """a_t = lambda_t (or 2 lambda_t - 1), b_t = (1 - lambda_t) silu(W_i x_t)."""
        floor = self.lower_bound
        f = self.f_proj(x)
        forget = floor + (1.0 - floor) * torch.sigmoid(f)
        a = 2.0 * forget - 1.0 if self.negative_eigenvalues else forget
        b = (1.0 - floor) * torch.sigmoid(-f) * F.silu(self.i_proj(x))
        return a, b

    def _readout(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.o_proj(self.g_norm(h) * F.silu(self.g_proj(x)))

    def _init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        return torch.zeros(batch_size, self.d_hidden, device=device, dtype=dtype)
