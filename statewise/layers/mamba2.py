"""Mamba-2 (Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient
Algorithms Through Structured State Space Duality"), the SSD mixer.

With E = d_inner = H heads x P head_dim, N = d_state, G = n_groups (head h reads the B, C
of group h // (H / G)), K = d_conv, per token:

    (z_t, xBC_t, dt_t) = W_in x_t (+ b_in)                       in_proj, D -> 2E + 2GN + H
    (x_t, B_t, C_t)    = act(causal depthwise conv over xBC, K taps)  (conv_dim = E + 2GN)
    dt_t               = clamp(softplus(dt_t + dt_bias), *dt_limit)    (H,)
    a_t                = exp(dt_t A),  A = -exp(A_log)                 scalar per head
    S_t[h]             = a_t[h] S_{t-1}[h] + B_t[g(h)]^T (dt_t[h] x_t[h])     (N x P)
    y_t[h]             = C_t[g(h)] S_t[h] + D[h] x_t[h]
    out_t              = W_out (RMSNorm_G(y_t * silu(z_t)) * w_norm) (+ b_out)

RMSNorm_G normalises each of the G groups of E / G channels (transformers'
``MambaRMSNormGated`` with norm_before_gate=False). The recurrence in S is scalar-decay
linear attention with q = C, k = B, v = dt x and log-decay g = dt A, run by
:mod:`statewise.ops.linear_attention`: mode "recurrent" is its loop over time, "chunk" the
SSD chunkwise algorithm (quadratic inside chunks of ``chunk_size`` with the masked-cumsum
segsum, the state passed between chunks). Masked steps use dt = 0: g = 0 and v = 0, the
state passes through, and the conv skips them.

``negative_eigenvalues`` (Grazzi et al. 2025): a_t = 2 exp(dt_t A) - 1 in (-1, 1]. The op
takes log-decays, so a signed decay is split into sign and magnitude: with s_t = sign(a_t)
and sigma_t = s_1 ... s_t (exact, +-1), every decay product over a segment is
sigma_t sigma_s exp(sum log|a|). So the op runs with g = log|a| and k_s -> sigma_s k_s, and
its outputs and final state are multiplied by sigma_t: exact in every mode. |a| is floored
at the dtype's smallest normal number so log|a| stays finite when a = 0 exactly.

Parameter names and shapes are those of transformers' ``Mamba2Mixer`` (in_proj, conv1d,
dt_bias, A_log, D, norm.weight, out_proj), so its state dict loads one-to-one
(docs/models/mamba2.md).

auto mode is "chunk": measured on this machine (torch 2.13, fp32, 1 thread as the machine
was shared, forward + backward of the whole layer, d_model 256, B 8, H 8, P 64, N 64):
T=16: recurrent 31 ms, chunk 8 ms; T=256: 0.42 s vs 0.15 s; T=1 ties. See
docs/models/mamba2.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError
from statewise.layers.base import SequenceMixer
from statewise.layers.checks import positive_int
from statewise.layers.mamba import (
    check_dt_range,
    conv_activation,
    inverse_softplus_dt,
    resolve_width,
)
from statewise.layers.registry import register
from statewise.ops.conv import causal_conv1d
from statewise.ops.linear_attention import check_compute_dtype, linear_attention


class GatedRMSNorm(nn.Module):
    """RMSNorm over each of ``n_groups`` groups of channels of y * silu(z), times a weight."""

    def __init__(self, width: int, n_groups: int, eps: float) -> None:
        super().__init__()
        self.n_groups = n_groups
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        u = y * F.silu(z)
        grouped = u.unflatten(-1, (self.n_groups, -1))
        return F.rms_norm(grouped, grouped.shape[-1:], eps=self.eps).flatten(-2) * self.weight


def _heads(d_inner: int, n_heads: int | None, head_dim: int | None) -> tuple[int, int]:
    """(n_heads, head_dim) with n_heads * head_dim = d_inner."""
    if n_heads is None and head_dim is None:
        head_dim = math.gcd(d_inner, 64)
    if head_dim is None:
        positive_int("n_heads", n_heads)
        if d_inner % n_heads:
            raise ArgumentError(f"n_heads={n_heads} must divide d_inner={d_inner}")
        return n_heads, d_inner // n_heads
    positive_int("head_dim", head_dim)
    if n_heads is None:
        if d_inner % head_dim:
            raise ArgumentError(f"head_dim={head_dim} must divide d_inner={d_inner}")
        return d_inner // head_dim, head_dim
    positive_int("n_heads", n_heads)
    if n_heads * head_dim != d_inner:
        raise ArgumentError(
            f"n_heads * head_dim = {n_heads} * {head_dim} must equal d_inner = {d_inner}"
        )
    return n_heads, head_dim


def number_pair(name: str, value: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ArgumentError(
            f"{name} must be a pair of numbers (low, high), got {value!r}"
        ) from None
    if not lo <= hi:
        raise ArgumentError(f"{name} must have low <= high, got {value!r}")
    return lo, hi


@register(
    "mamba2",
    family="matrix state (SSD, scalar decay per head)",
    paper="Dao & Gu 2024, Transformers are SSMs (Mamba-2)",
    state_size="134 * d + 384",
)
class Mamba2(SequenceMixer):
    """The Mamba-2 (SSD) mixer.

    Args:
        d_model: input and output width D.
        d_state: N, the state per head is N x head_dim (transformers' ``state_size``).
        d_conv: K, the causal conv kernel (``conv_kernel``).
        expand: d_inner = round(expand * d_model) unless ``d_inner`` is given.
        d_inner: E = n_heads * head_dim.
        n_heads, head_dim: H and P; give either, both (H P = E) or neither
            (P = gcd(E, 64)).
        n_groups: G, the number of B/C groups shared by H / G heads each; also the groups
            of the gated RMSNorm. Must divide H and E.
        bias: biases in in_proj and out_proj (``use_bias``).
        conv_bias: a bias in the conv (``use_conv_bias``).
        activation: after the conv (``hidden_act``); the gate is always SiLU.
        norm_eps: epsilon of the gated RMSNorm (transformers' ``layer_norm_epsilon``).
        dt_min, dt_max, dt_init_floor: dt_bias initialisation (log-uniform dt).
        dt_limit: dt is clamped to [low, high] after the softplus (``time_step_limit``).
        A_init_range: A_log = log(U(low, high)) at initialisation, per head.
        negative_eigenvalues: a_t = 2 exp(dt A) - 1 in (-1, 1] (Grazzi et al. 2025).
        chunk_size: chunk length C of the chunkwise form.
        mode: "auto" (= "chunk"), "recurrent" or "chunk".
        compute_dtype: "float32" or "bfloat16": the dtype of the chunk form's GEMMs (the
            state and its sums across chunks stay in the input dtype; see
            :func:`statewise.ops.linear_attention.resolve_compute_dtype`).

    State: {"conv": (B, K-1, E + 2GN), the last K-1 conv inputs; "ssm": (B, H, N, P)}.
    Parameters: D(2E + 2GN + H) (+ that many biases) + K(E + 2GN) (+ E + 2GN) + 3H + E
    + ED (+ D); 6d^2 + 140d + 640 + H(d + 3) at the defaults.
    """

    modes = ("recurrent", "chunk")

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        d_conv: int = 4,
        expand: float = 2,
        d_inner: int | None = None,
        n_heads: int | None = None,
        head_dim: int | None = None,
        n_groups: int = 1,
        bias: bool = False,
        conv_bias: bool = True,
        activation: str = "silu",
        norm_eps: float = 1e-5,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: Sequence[float] = (0.0, math.inf),
        A_init_range: Sequence[float] = (1.0, 16.0),  # noqa: N803 (the paper's name)
        negative_eigenvalues: bool = False,
        chunk_size: int = 64,
        mode: str = "auto",
        compute_dtype: str = "float32",
    ) -> None:
        super().__init__(d_model, mode)
        self.d_state = positive_int("d_state", d_state)
        self.d_conv = positive_int("d_conv", d_conv)
        self.d_inner = resolve_width(d_model, expand, d_inner)
        self.n_heads, self.head_dim = _heads(self.d_inner, n_heads, head_dim)
        self.n_groups = positive_int("n_groups", n_groups)
        if self.n_heads % n_groups:
            raise ArgumentError(f"n_groups={n_groups} must divide n_heads={self.n_heads}")
        self.chunk_size = positive_int("chunk_size", chunk_size)
        self.compute_dtype = check_compute_dtype(compute_dtype)
        self.activation = activation
        self._act = conv_activation(activation)
        if not norm_eps > 0:
            raise ArgumentError(f"norm_eps must be positive, got {norm_eps}")
        check_dt_range(dt_min, dt_max, dt_init_floor)
        self.dt_init = (dt_min, dt_max, dt_init_floor)
        self.dt_limit = number_pair("dt_limit", dt_limit)
        self.A_init_range = number_pair("A_init_range", A_init_range)
        if self.A_init_range[0] <= 0:
            raise ArgumentError(f"A_init_range must be positive, got {A_init_range!r}")
        self.negative_eigenvalues = bool(negative_eigenvalues)

        inner, heads, gn = self.d_inner, self.n_heads, self.n_groups * self.d_state
        self.conv_dim = inner + 2 * gn
        self.in_proj = nn.Linear(d_model, inner + self.conv_dim + heads, bias=bias)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, self.d_conv, groups=self.conv_dim, bias=conv_bias
        )
        self.dt_bias = nn.Parameter(torch.empty(heads))
        self.A_log = nn.Parameter(torch.empty(heads))
        self.D = nn.Parameter(torch.empty(heads))
        self.norm = GatedRMSNorm(inner, self.n_groups, norm_eps)
        self.out_proj = nn.Linear(inner, d_model, bias=bias)
        self.register_buffer(
            "_group_of_head",
            torch.arange(heads) // (heads // self.n_groups),
            persistent=False,
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba-2's initialisation: A ~ U(A_init_range), D = 1, dt log-uniform."""
        self.dt_bias.copy_(inverse_softplus_dt(self.n_heads, *self.dt_init))
        self.A_log.copy_(torch.empty(self.n_heads).uniform_(*self.A_init_range).log())
        self.D.fill_(1.0)
        self.norm.weight.fill_(1.0)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, n_heads={self.n_heads}, "
            f"head_dim={self.head_dim}, d_state={self.d_state}, n_groups={self.n_groups}, "
            f"d_conv={self.d_conv}, chunk_size={self.chunk_size}, "
            f"negative_eigenvalues={self.negative_eigenvalues}, mode={self.mode!r}, "
            f"compute_dtype={self.compute_dtype!r}"
        )

    def auto_mode(self, seq_len: int) -> str:
        return "chunk"

    def _forward(
        self, x: torch.Tensor, state: dict, mask: torch.Tensor | None, mode: str
    ) -> tuple[torch.Tensor, dict]:
        batch, seq_len, _ = x.shape
        if seq_len == 0:
            return x.new_zeros(x.shape), state
        inner, heads, gn = self.d_inner, self.n_heads, self.n_groups * self.d_state
        z, xbc, dt = self.in_proj(x).split([inner, self.conv_dim, heads], dim=-1)
        xbc, window = causal_conv1d(
            xbc, self.conv1d.weight[:, 0], self.conv1d.bias, state["conv"], mask
        )
        xs, b, c = self._act(xbc).split([inner, gn, gn], dim=-1)
        dt = F.softplus(dt + self.dt_bias).clamp(*self.dt_limit)  # (B, T, H)
        if mask is not None:  # dt = 0: the identity step
            dt = torch.where(mask.unsqueeze(-1), dt, torch.zeros_like(dt))

        xs = xs.unflatten(-1, (heads, self.head_dim))  # (B, T, H, P)
        q, k = (self._per_head(t) for t in (c, b))  # (B, H, T, N)
        v = (xs * dt.unsqueeze(-1)).transpose(1, 2)  # (B, H, T, P)
        g = (dt * -torch.exp(self.A_log)).transpose(1, 2)  # (B, H, T), log-decays
        o, ssm = self._attend(q, k, v, g, state["ssm"], mode)
        y = o.transpose(1, 2) + self.D.unsqueeze(-1) * xs  # (B, T, H, P)
        y = self.norm(y.flatten(-2), z)
        return self.out_proj(y), {"conv": window, "ssm": ssm}

    def _per_head(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, G N) group values -> (B, H, T, N), head h taking group h // (H / G)."""
        grouped = t.unflatten(-1, (self.n_groups, self.d_state))
        if self.n_groups != self.n_heads:
            grouped = grouped.index_select(2, self._group_of_head)
        return grouped.transpose(1, 2)

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        g: torch.Tensor,
        s0: torch.Tensor,
        mode: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The SSD recurrence through the linear-attention op; signed decays by a sign split."""
        if not self.negative_eigenvalues:
            return linear_attention(q, k, v, g, s0, mode, self.chunk_size, self.compute_dtype)
        a = 2.0 * torch.exp(g) - 1.0
        negative = a < 0
        log_abs = torch.log(a.abs().clamp_min(torch.finfo(a.dtype).tiny))
        # sigma_t = prod_{j <= t} sign(a_j), from the parity of the negatives so far
        sigma = 1.0 - 2.0 * (negative.long().cumsum(dim=-1) % 2).to(a.dtype)  # (B, H, T)
        o, s = linear_attention(
            q, k * sigma.unsqueeze(-1), v, log_abs, s0, mode, self.chunk_size, self.compute_dtype
        )
        return o * sigma.unsqueeze(-1), s * sigma[..., -1, None, None]

    def _step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        y, state = self._forward(x_t.unsqueeze(1), state, None, "recurrent")
        return y.squeeze(1), state

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict:
        return {
            "conv": torch.zeros(
                batch_size, self.d_conv - 1, self.conv_dim, device=device, dtype=dtype
            ),
            "ssm": torch.zeros(
                batch_size,
                self.n_heads,
                self.d_state,
                self.head_dim,
                device=device,
                dtype=dtype,
            ),
        }
