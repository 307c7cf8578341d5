"""DeltaNet (Schlag et al. 2021; Yang et al. 2024, "Parallelizing Linear Transformers with
the Delta Rule over Sequence Length"), in the layer layout of flash-linear-attention's
``DeltaNet`` (``fla/layers/delta_net.py``).

Per token, H heads, key width d_k = expand_k D / H, value width d_v = expand_v D / H:

    (q, k, v)_t = silu(causal depthwise conv over (W_q x, W_k x, W_v x), K taps)
    q_t = l2norm(q_t)_h / sqrt(d_k),   k_t = l2norm(k_t)_h        l2norm(x) = x / sqrt(|x|^2 + 1e-6)
    beta_t = sigmoid(W_beta x_t)_h           (2 sigmoid(.) with negative_eigenvalues)
    S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T      (S: d_k x d_v per head)
    o_t = S_t^T q_t
    y_t = W_o concat_h( RMSNorm(o_t,h) * w  [* silu((W_g x_t)_h) with use_gate] )

The paper writes the transposed state, S_t = S_{t-1}(I - beta k k^T) + beta v k^T,
o_t = S_t q_t. Without ``use_short_conv`` q, k, v are silu(W x) (fla's layout without the
conv). The RMSNorm is over each head's d_v outputs, one weight (d_v,) shared by the heads.

Negative eigenvalues (Grazzi et al. 2025, ``negative_eigenvalues=True``): beta in (0, 2),
so the transition's eigenvalue along k_t, 1 - beta_t, is in (-1, 1) (the others are 1);
the transitions then include reflections (beta = 2), which is what parity needs.

The recurrence runs through :mod:`statewise.ops.delta_rule`: "recurrent" (the loop, with
a backward that recomputes states stretch by stretch) or "chunk" (the WY / UT form:
triangular solves and GEMMs per chunk of ``chunk_size`` steps, a loop of T / C steps
between chunks). Masked steps use beta = 0 (an identity step; the conv skips them).
Gated DeltaNet (:mod:`statewise.layers.gated_deltanet`) is this layer with a decay
(:meth:`DeltaNet.log_decay`).

Deliberate differences from fla: one depthwise conv over the concatenated q, k, v channels
(``conv1d``; fla has three, ``q_conv1d`` ... ``v_conv1d``, whose weights are its rows);
PyTorch's default initialisation (fla's models re-draw weights from N(0, 0.02)).

auto mode: "recurrent" up to 4 tokens, "chunk" beyond (measured: docs/models/deltanet.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from statewise.layers.base import SequenceMixer
from statewise.layers.checks import flag, positive_int, positive_number
from statewise.layers.mlstm import head_width
from statewise.layers.registry import register
from statewise.ops.conv import causal_conv1d
from statewise.ops.delta_rule import delta_rule

L2_EPS = 1e-6  # fla's l2norm: x / sqrt(sum x^2 + eps)
RECURRENT_UP_TO = 4  # auto mode's crossover (docs/models/deltanet.md)


def l2_normalise(x: torch.Tensor, eps: float = L2_EPS) -> torch.Tensor:
    """x / sqrt(|x|^2 + eps) over the last dimension."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


class HeadRMSNorm(nn.Module):
    """RMSNorm over each head's last dimension with one weight shared by the heads, times
    silu(gate) when a gate is given (fla's ``RMSNorm`` / ``FusedRMSNormGated``)."""

    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.eps = positive_number("norm_eps", eps)
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, o: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        y = F.rms_norm(o, self.weight.shape, self.weight, self.eps)
        return y if gate is None else y * F.silu(gate)


@register(
    "deltanet",
    family="matrix state (delta rule)",
    paper="Yang et al. 2024, Parallelizing Linear Transformers with the Delta Rule",
    state_size="d * d // 4 + 9 * d",
)
class DeltaNet(SequenceMixer):
    """DeltaNet: linear attention whose state is corrected by the delta rule.

    Args:
        d_model: input and output width D.
        n_heads: H; ``int(expand_k * D)`` and ``int(expand_v * D)`` must be multiples of it.
        expand_k, expand_v: key and value widths H d_k = int(expand_k D), H d_v =
            int(expand_v D).
        use_short_conv: a causal depthwise conv of ``d_conv`` taps on q, k and v.
        d_conv: K, the conv's taps.
        conv_bias: a bias in the conv.
        use_gate: an output gate silu(W_g x) after the norm.
        norm_eps: epsilon of the per-head RMSNorm.
        negative_eigenvalues: beta = 2 sigmoid(.) in (0, 2) (Grazzi et al. 2025).
        chunk_size: C of the chunkwise form (any positive int).
        mode: "auto", "recurrent" or "chunk".

    State: {"conv": (B, K-1, 2 H d_k + H d_v), the last K-1 projected inputs (only with
    use_short_conv); "kv": (B, H, d_k, d_v)}. Parameters: D (2 H d_k + H d_v) + D H
    (+ D H d_v with the gate) + H d_v D + d_v, plus K (2 H d_k + H d_v) (+ as many biases)
    for the conv: 4 D^2 + 16 D + D / 4 at the defaults.
    """

    modes = ("recurrent", "chunk")

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        use_short_conv: bool = True,
        d_conv: int = 4,
        conv_bias: bool = False,
        use_gate: bool = False,
        norm_eps: float = 1e-5,
        negative_eigenvalues: bool = False,
        chunk_size: int = 64,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        self.n_heads = positive_int("n_heads", n_heads)
        self.head_k = head_width("expand_k", d_model, expand_k, n_heads)
        self.head_v = head_width("expand_v", d_model, expand_v, n_heads)
        self.key_dim, self.value_dim = n_heads * self.head_k, n_heads * self.head_v
        self.use_short_conv = flag("use_short_conv", use_short_conv)
        self.d_conv = positive_int("d_conv", d_conv)
        self.use_gate = flag("use_gate", use_gate)
        self.negative_eigenvalues = flag("negative_eigenvalues", negative_eigenvalues)
        self.chunk_size = positive_int("chunk_size", chunk_size)

        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.b_proj = nn.Linear(d_model, n_heads, bias=False)
        self.conv_dim = 2 * self.key_dim + self.value_dim
        if use_short_conv:
            self.conv1d = nn.Conv1d(
                self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, bias=conv_bias
            )
        if use_gate:
            self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.o_norm = HeadRMSNorm(self.head_v, norm_eps)
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, head_k={self.head_k}, "
            f"head_v={self.head_v}, use_short_conv={self.use_short_conv}, "
            f"d_conv={self.d_conv}, use_gate={self.use_gate}, "
            f"negative_eigenvalues={self.negative_eigenvalues}, "
            f"chunk_size={self.chunk_size}, mode={self.mode!r}"
        )

    def auto_mode(self, seq_len: int) -> str:
        return "recurrent" if seq_len <= RECURRENT_UP_TO else "chunk"

    def log_decay(self, x: torch.Tensor) -> torch.Tensor | None:
        """Per-head log-decays g (B, T, H) of the state before each update; None: no decay."""
        return None

    def _heads(self, x: torch.Tensor, width: int) -> torch.Tensor:
        """(B, T, H * width) -> (B, H, T, width)."""
        return x.unflatten(-1, (self.n_heads, width)).transpose(1, 2)

    def _forward(
        self, x: torch.Tensor, state: dict, mask: torch.Tensor | None, mode: str
    ) -> tuple[torch.Tensor, dict]:
        if x.shape[1] == 0:
            return x.new_zeros(x.shape), state
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)
        new_state = {}
        if self.use_short_conv:
            qkv, new_state["conv"] = causal_conv1d(
                qkv, self.conv1d.weight[:, 0], self.conv1d.bias, state["conv"], mask
            )
        q, k, v = F.silu(qkv).split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = l2_normalise(self._heads(q, self.head_k)) * self.head_k**-0.5
        k = l2_normalise(self._heads(k, self.head_k))
        beta = torch.sigmoid(self.b_proj(x))  # (B, T, H)
        if self.negative_eigenvalues:
            beta = 2.0 * beta
        g = self.log_decay(x)
        if mask is not None:  # beta = 0 (and g = 0): the identity step
            keep = mask.unsqueeze(-1)
            beta = torch.where(keep, beta, torch.zeros_like(beta))
            g = None if g is None else torch.where(keep, g, torch.zeros_like(g))
        o, new_state["kv"] = delta_rule(
            q,
            k,
            self._heads(v, self.head_v),
            beta.transpose(1, 2),
            None if g is None else g.transpose(1, 2),
            state["kv"],
            mode=mode,
            chunk_size=self.chunk_size,
        )
        o = o.transpose(1, 2)  # (B, T, H, d_v)
        gate = self.g_proj(x).unflatten(-1, (self.n_heads, self.head_v)) if self.use_gate else None
        return self.o_proj(self.o_norm(o, gate).flatten(-2)), new_state

    def _step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        y, state = self._forward(x_t.unsqueeze(1), state, None, "recurrent")
        return y.squeeze(1), state

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict:
        state = {}
        if self.use_short_conv:
            state["conv"] = torch.zeros(
                batch_size, self.d_conv - 1, self.conv_dim, device=device, dtype=dtype
            )
        state["kv"] = torch.zeros(
            batch_size, self.n_heads, self.head_k, self.head_v, device=device, dtype=dtype
        )
        return state
