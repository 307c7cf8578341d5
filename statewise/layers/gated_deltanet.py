"""Gated DeltaNet (Yang et al. 2025, "Gated Delta Networks: Improving Mamba2 with Delta
Rule"), in the layer layout of the paper and of flash-linear-attention's ``GatedDeltaNet``
(``fla/layers/gated_deltanet.py``).

DeltaNet's layer (:mod:`statewise.layers.deltanet`: q, k, v projections, each through a
short causal depthwise conv and SiLU, L2-normalised q and k, beta = sigmoid(W_beta x))
with a data-dependent decay per head, Mamba-2's:

    alpha_t = exp(g_t),  g_t = -exp(A_log) * softplus(W_alpha x_t + dt_bias)   (H,), in (0, 1)
    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T           (d_k x d_v)
    o_t = S_t^T q_t
    y_t = W_o concat_h( RMSNorm(o_t,h) * w * silu((W_g x_t)_h) )

(the paper writes S^T: S_t = S_{t-1} alpha_t (I - beta k k^T) + beta v k^T). The output
gate is on by default and the value heads are twice the key heads (``expand_v = 2``), as
in fla. ``negative_eigenvalues=True``: beta = 2 sigmoid(.) in (0, 2), so the transition's
eigenvalue along k_t, alpha_t (1 - beta_t), is in (-1, 1) (Grazzi et al. 2025).

The recurrence is :mod:`statewise.ops.delta_rule` with the log-decays g: "recurrent" or
"chunk" (the WY / UT form with the decays of each chunk as segment sums of g, every
exponent <= 0). Masked steps use beta = 0 and g = 0 (the identity step).

Initialisation: A = exp(A_log) ~ U(A_init_range) per head, softplus(dt_bias) log-uniform in
[dt_min, dt_max] (floored at dt_init_floor), as statewise's Mamba-2; fla draws
A ~ U(0, 16), here U(1, 16) by default, so that no head starts without decay.

auto mode: as DeltaNet's, "recurrent" up to 4 tokens, "chunk" beyond (measured:
docs/models/gated_deltanet.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError
from statewise.layers.deltanet import DeltaNet
from statewise.layers.mamba import check_dt_range, inverse_softplus_dt
from statewise.layers.mamba2 import number_pair
from statewise.layers.registry import register


@register(
    "gated_deltanet",
    family="matrix state (gated delta rule)",
    paper="Yang et al. 2025, Gated Delta Networks: Improving Mamba2 with Delta Rule",
    state_size="d * d // 2 + 12 * d",
)
class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet: the delta rule with a data-dependent scalar decay per head.

    Args: those of :class:`statewise.layers.deltanet.DeltaNet` (with ``expand_v = 2`` and
    ``use_gate = True`` by default), and

        dt_min, dt_max, dt_init_floor: dt_bias initialisation (log-uniform dt).
        A_init_range: A_log = log(U(low, high)) at initialisation, per head (low > 0).

    State: {"conv": (B, K-1, 2 H d_k + H d_v); "kv": (B, H, d_k, d_v)}. Parameters: those
    of DeltaNet plus a_proj (D H), A_log and dt_bias (H each): 8 D^2 + 24 D + D / 2 + 8
    at the defaults.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        expand_k: float = 1.0,
        expand_v: float = 2.0,
        use_short_conv: bool = True,
        d_conv: int = 4,
        conv_bias: bool = False,
        use_gate: bool = True,
        norm_eps: float = 1e-5,
        negative_eigenvalues: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        A_init_range: Sequence[float] = (1.0, 16.0),  # noqa: N803 (the paper's name)
        chunk_size: int = 64,
        mode: str = "auto",
    ) -> None:
        super().__init__(
            d_model,
            n_heads=n_heads,
            expand_k=expand_k,
            expand_v=expand_v,
            use_short_conv=use_short_conv,
            d_conv=d_conv,
            conv_bias=conv_bias,
            use_gate=use_gate,
            norm_eps=norm_eps,
            negative_eigenvalues=negative_eigenvalues,
            chunk_size=chunk_size,
            mode=mode,
        )
        check_dt_range(dt_min, dt_max, dt_init_floor)
        self.dt_init = (dt_min, dt_max, dt_init_floor)
        self.A_init_range = number_pair("A_init_range", A_init_range)
        if self.A_init_range[0] <= 0:
            raise ArgumentError(f"A_init_range must be positive, got {A_init_range!r}")
        self.a_proj = nn.Linear(d_model, n_heads, bias=False)
        self.A_log = nn.Parameter(torch.empty(n_heads))
        self.dt_bias = nn.Parameter(torch.empty(n_heads))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """A ~ U(A_init_range), softplus(dt_bias) log-uniform in [dt_min, dt_max]."""
        self.A_log.copy_(torch.empty(self.n_heads).uniform_(*self.A_init_range).log())
        self.dt_bias.copy_(inverse_softplus_dt(self.n_heads, *self.dt_init))

    def log_decay(self, x: torch.Tensor) -> torch.Tensor:
        """g = -exp(A_log) softplus(W_alpha x + dt_bias), (B, T, H), so alpha = exp(g)."""
        return -torch.exp(self.A_log) * F.softplus(self.a_proj(x) + self.dt_bias)
