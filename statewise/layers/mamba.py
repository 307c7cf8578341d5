"""Mamba (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces").

With E = d_inner channels (expand * d_model), N = d_state, R = dt_rank, per token:

    (u_t, z_t)       = W_in x_t (+ b_in)                          in_proj, D -> 2E
    c_t              = act(conv_bias + sum_j w_conv[:, j] u_{t-K+1+j})    causal depthwise conv
    (r_t, B_t, C_t)  = W_x c_t                                    x_proj, E -> R + 2N
    dt_t             = softplus(W_dt r_t + b_dt)                  dt_proj, R -> E, (B, E)
    A                = -exp(A_log)                                (E, N)
    h_t              = exp(dt_t A) * h_{t-1} + (dt_t c_t) B_t^T   (E, N), elementwise in (e, n)
    y_t              = h_t C_t + D * c_t
    out_t            = W_out (y_t * silu(z_t)) (+ b_out)          out_proj, E -> D

act is SiLU by default (transformers' ``hidden_act``). The state is the conv window (the
last K - 1 inputs u, K = d_conv) and h. The recurrence in h is diagonal and linear, run by
:func:`statewise.ops.selective_scan.selective_scan` over
:func:`statewise.ops.scan.linear_recurrence`: mode "recurrent" is its loop, "scan" its
Hillis-Steele doubling scan. Masked steps use dt = 0 (so exp(dt A) = 1 and the input term
is 0) and are skipped by the convolution.

``negative_eigenvalues`` (Grazzi et al. 2025, "Unlocking State-Tracking in Linear RNNs
Through Negative Eigenvalues"): the transition becomes 2 exp(dt A) - 1, in (-1, 1], which
lets one layer solve parity; dt = 0 is still the identity step.

Parameter names and shapes are those of transformers' ``MambaMixer`` and mambapy's
``MambaBlock`` (in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj), so their state
dicts load one-to-one (see docs/models/mamba.md).

auto mode is "recurrent": measured on this machine (torch 2.13, fp32, 1 thread as the
machine was shared, forward + backward of the whole layer, d_model 256, B 8): T=16:
recurrent 27 ms, scan 79 ms; T=256: 0.42 s vs 1.0 s; the loop wins at every length
(T=1 ties). See docs/models/mamba.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError
from statewise.layers.base import SequenceMixer
from statewise.layers.checks import no_weight_decay, positive_int, positive_number
from statewise.layers.registry import register
from statewise.ops.conv import causal_conv1d
from statewise.ops.selective_scan import selective_scan

# layer mode -> form of ops.scan.linear_recurrence
_FORMS = {"recurrent": "loop", "scan": "scan"}

# activations after the causal conv, by transformers' ``hidden_act`` names
CONV_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


def conv_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation called ``name`` (one of :data:`CONV_ACTIVATIONS`)."""
    if name not in CONV_ACTIVATIONS:
        raise ArgumentError(
            f"activation must be one of {', '.join(CONV_ACTIVATIONS)}, got {name!r}"
        )
    return CONV_ACTIVATIONS[name]


def check_dt_range(dt_min: float, dt_max: float, dt_init_floor: float) -> None:
    if not 0 < dt_min <= dt_max:
        raise ArgumentError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    if dt_init_floor < 0:
        raise ArgumentError(f"dt_init_floor must be >= 0, got {dt_init_floor}")


def inverse_softplus_dt(
    n: int, dt_min: float, dt_max: float, dt_init_floor: float, generator=None
) -> torch.Tensor:
    """Biases b with softplus(b) = dt, dt log-uniform in [dt_min, dt_max] (floored): the
    time-step initialisation of Mamba and Mamba-2."""
    log_dt = torch.rand(n, generator=generator) * (math.log(dt_max) - math.log(dt_min))
    dt = torch.exp(log_dt + math.log(dt_min)).clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # softplus^-1(dt) = dt + log(1 - exp(-dt))


def resolve_width(d_model: int, expand: float, d_inner: int | None) -> int:
    """d_inner if given, else round(expand * d_model)."""
    if d_inner is not None:
        return positive_int("d_inner", d_inner)
    return max(1, round(positive_number("expand", expand) * d_model))


@register(
    "mamba",
    family="diagonal linear (selective SSM)",
    paper="Gu & Dao 2023, Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
    state_size="38 * d",
)
class Mamba(SequenceMixer):
    """The Mamba mixer: gated, with a causal conv and a selective (input-dependent) SSM.

    Args:
        d_model: input and output width D.
        d_state: N, the SSM state per channel (transformers' ``state_size``).
        d_conv: K, the causal conv kernel (``conv_kernel``).
        expand: d_inner = round(expand * d_model) unless ``d_inner`` is given.
        d_inner: E, the inner width (transformers' ``intermediate_size``).
        dt_rank: R, the rank of the dt projection; "auto" = ceil(d_model / 16).
        bias: biases in in_proj and out_proj (``use_bias``).
        conv_bias: a bias in the conv (``use_conv_bias``).
        activation: after the conv (``hidden_act``), one of :data:`CONV_ACTIVATIONS`;
            the output gate is always SiLU.
        dt_min, dt_max, dt_init_floor: dt is initialised log-uniform in [dt_min, dt_max],
            floored at dt_init_floor (``time_step_min/max/floor``).
        dt_init: "random" (W_dt ~ U(+-s)) or "constant" (W_dt = s), s = dt_scale / sqrt(R)
            (``time_step_init_scheme``, ``time_step_scale``).
        negative_eigenvalues: transition 2 exp(dt A) - 1 in (-1, 1] (Grazzi et al. 2025).
        scan_chunk_size: time steps per chunk of the selective scan (None: by memory,
            see :mod:`statewise.ops.selective_scan`); a speed/memory knob only.
        mode: "auto" (= "recurrent"), "recurrent" or "scan".

    State: {"conv": (B, K-1, E), the last K-1 conv inputs; "ssm": (B, E, N)}.
    Parameters: 2DE (+2E) + KE (+E) + E(R + 2N) + (RE + E) + EN + E + ED (+D);
    6d^2 + 110d + 4d ceil(d/16) at the defaults.
    """

    modes = ("recurrent", "scan")

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        d_inner: int | None = None,
        dt_rank: int | str = "auto",
        bias: bool = False,
        conv_bias: bool = True,
        activation: str = "silu",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        negative_eigenvalues: bool = False,
        scan_chunk_size: int | None = None,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        self.d_state = positive_int("d_state", d_state)
        self.d_conv = positive_int("d_conv", d_conv)
        self.d_inner = resolve_width(d_model, expand, d_inner)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        positive_int("dt_rank", self.dt_rank)
        self.activation = activation
        self._act = conv_activation(activation)
        check_dt_range(dt_min, dt_max, dt_init_floor)
        if dt_init not in ("random", "constant"):
            raise ArgumentError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        self.dt_init = (dt_init, dt_scale, dt_min, dt_max, dt_init_floor)
        self.negative_eigenvalues = bool(negative_eigenvalues)
        if scan_chunk_size is not None:
            positive_int("scan_chunk_size", scan_chunk_size)
        self.scan_chunk_size = scan_chunk_size

        inner, n = self.d_inner, self.d_state
        self.in_proj = nn.Linear(d_model, 2 * inner, bias=bias)
        self.conv1d = nn.Conv1d(inner, inner, self.d_conv, groups=inner, bias=conv_bias)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(inner, n))
        self.D = nn.Parameter(torch.empty(inner))
        self.out_proj = nn.Linear(inner, d_model, bias=bias)
        no_weight_decay(self.A_log)  # as the reference's _no_weight_decay (D is a vector)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's initialisation: S4D-real A = -(1..N), D = 1, dt log-uniform."""
        scheme, scale, dt_min, dt_max, floor = self.dt_init
        std = scale * self.dt_rank**-0.5
        if scheme == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        self.dt_proj.bias.copy_(inverse_softplus_dt(self.d_inner, dt_min, dt_max, floor))
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32)
        self.A_log.copy_(torch.log(a).expand(self.d_inner, -1))
        self.D.fill_(1.0)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
            f"d_conv={self.d_conv}, dt_rank={self.dt_rank}, activation={self.activation!r}, "
            f"negative_eigenvalues={self.negative_eigenvalues}, mode={self.mode!r}"
        )

    def auto_mode(self, seq_len: int) -> str:
        return "recurrent"

    def _forward(
        self, x: torch.Tensor, state: dict, mask: torch.Tensor | None, mode: str
    ) -> tuple[torch.Tensor, dict]:
        if x.shape[1] == 0:
            return x.new_zeros(x.shape), state
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u, window = causal_conv1d(
            u, self.conv1d.weight[:, 0], self.conv1d.bias, state["conv"], mask
        )
        u = self._act(u)
        r, b, c = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(r))
        if mask is not None:  # dt = 0: the identity step
            dt = torch.where(mask.unsqueeze(-1), dt, torch.zeros_like(dt))
        y, h = selective_scan(
            u,
            dt,
            -torch.exp(self.A_log),
            b,
            c,
            self.D,
            state["ssm"],
            mode=_FORMS[mode],
            chunk_size=self.scan_chunk_size,
            negative_eigenvalues=self.negative_eigenvalues,
        )
        return self.out_proj(y * F.silu(z)), {"conv": window, "ssm": h}

    def _step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        y, state = self._forward(x_t.unsqueeze(1), state, None, "recurrent")
        return y.squeeze(1), state

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict:
        return {
            "conv": torch.zeros(
                batch_size, self.d_conv - 1, self.d_inner, device=device, dtype=dtype
            ),
            "ssm": torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype),
        }
