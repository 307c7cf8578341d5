"""Multi-scale retention (Sun et al. 2023, "Retentive Network: A Successor to Transformer").

Per head h (h = 0 .. H-1, head width d = d_model / H) with decay gamma_h = 1 - 2^(-5-h):

    q_n = R(n) (W_Q x_n)_h,   k_n = R(n) (W_K x_n)_h / sqrt(d),   v_n = (W_V x_n)_h
    S_n = gamma_h S_{n-1} + k_n^T v_n,         o_n = q_n S_n          (S: d x d)
    y_n = W_O (swish(W_G x_n) * GroupNorm_H(o_n))

R(n) is the paper's relative-position rotation (xPos without its scale factor, as in
the released RetNet code; RoPE-style): feature pairs (2i, 2i+1) of q and k are rotated by
the angle n * theta_i with theta_i = 10000^(-i / (d/2 - 1)), so q_n . k_m depends on n - m
only. n counts the real tokens seen before x_n, kept in the state as ``pos``.
GroupNorm_H normalises each head's d outputs (mean and variance over them) and applies a
learned per-channel affine map.

The retention itself runs through :mod:`statewise.ops.linear_attention` with
g = log gamma_h, in mode "recurrent" (per token), "parallel" (the T x T form) or "chunk"
(the paper's chunkwise form). Masked steps use g = 0 and k = 0 (the state passes through)
and do not advance ``pos``.

Negative eigenvalues (``negative_eigenvalues=True``, after Grazzi et al. 2025): RetNet's
transitions are fixed, gamma_h in (0.96, 1), and the map gamma -> 2 gamma - 1 of the
paper would keep them positive (1 - 2^(-4-h)). Instead the odd heads (h = 1, 3, ...) use
the transition -gamma_h, eigenvalue in (-1, -0.96): their memory alternates sign every
real token, S_n = -gamma_h S_{n-1} + k_n^T v_n. Since (-gamma)^(n-m) = gamma^(n-m) (-1)^n
(-1)^m, these heads run through the same positive-decay op with q_n and k_n multiplied by
(-1)^n (n = the position ``pos``, i.e. a rotation by n * pi, exact in floating point) and
the op's state being (-1)^n times the stored state. Being data-independent, this adds a
position-parity feature; it does not give RetNet an input-controlled sign, so it does not
make RetNet solve parity (that needs a data-dependent transition, e.g. GateLoop's or
Mamba's ``negative_eigenvalues``). Needs n_heads >= 2.

auto mode is "chunk": measured on this machine (2 cores, torch 2.13, fp32, forward +
backward of the retention op, B8 H4 d64): T=256: recurrent 176 ms, parallel 28 ms, chunk
(C=64) 18 ms; T=1024: 1.3 s, 473 ms, 68 ms; T=2048: 1.5 s, 9.1 s, 0.56 s. For T <= C the
chunk form is the parallel form. See docs/models/retnet.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError
from statewise.layers.base import SequenceMixer
from statewise.layers.checks import flag, positive_int
from statewise.layers.registry import register
from statewise.ops.linear_attention import check_compute_dtype, linear_attention


def rotation_angles(head_dim: int) -> torch.Tensor:
    """theta_i = 10000^(-i / (head_dim/2 - 1)), i = 0 .. head_dim/2 - 1, in float64."""
    return 10000.0 ** -torch.linspace(0.0, 1.0, head_dim // 2, dtype=torch.float64)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the feature pairs (2i, 2i+1) of x (..., d) by angles with cos, sin (..., d/2)."""
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1).flatten(-2)


@register(
    "retnet",
    family="matrix state",
    paper="Sun et al. 2023, Retentive Network",
    state_size="d * d // 4",
)
class Retention(SequenceMixer):
    """Gated multi-scale retention, the token mixer of RetNet.

    Args:
        d_model: input and output width D.
        n_heads: number of heads H; must divide D, and D / H must be even (the rotation
            works on feature pairs).
        chunk_size: chunk length C of the chunkwise form.
        negative_eigenvalues: odd heads use the transition -gamma_h (see the module
            docstring); needs n_heads >= 2.
        mode: "auto" (= "chunk"), "recurrent", "parallel" or "chunk".
        compute_dtype: "float32" or "bfloat16": the dtype of the chunk form's GEMMs (the
            state and its sums across chunks stay in the input dtype; see
            :func:`statewise.ops.linear_attention.resolve_compute_dtype`).

    State: {"kv": (B, H, D/H, D/H) float, "pos": (B,) int64 count of real tokens seen}.
    Parameters: q_proj, k_proj, v_proj, g_proj, out_proj (Linear D -> D, no bias) and
    group_norm (GroupNorm with H groups over D channels, affine): 5 D^2 + 2 D.
    Key and value widths are both D (the paper's released models use 2D for values).
    """

    modes = ("recurrent", "parallel", "chunk")

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        chunk_size: int = 64,
        negative_eigenvalues: bool = False,
        mode: str = "auto",
        compute_dtype: str = "float32",
    ) -> None:
        super().__init__(d_model, mode)
        positive_int("n_heads", n_heads)
        if d_model % n_heads:
            raise ArgumentError(f"n_heads={n_heads} must divide d_model={d_model}")
        if (d_model // n_heads) % 2:
            raise ArgumentError(
                f"the head width d_model / n_heads = {d_model // n_heads} must be even "
                "(the relative-position rotation acts on feature pairs)"
            )
        positive_int("chunk_size", chunk_size)
        flag("negative_eigenvalues", negative_eigenvalues)
        if negative_eigenvalues and n_heads < 2:
            raise ArgumentError(
                "negative_eigenvalues=True negates the odd heads' decays, so it needs "
                f"n_heads >= 2, got {n_heads}"
            )
        self.negative_eigenvalues = negative_eigenvalues
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.chunk_size = chunk_size
        self.compute_dtype = check_compute_dtype(compute_dtype)
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.g_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.group_norm = nn.GroupNorm(n_heads, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # the initialisation of the released RetNet code: small Xavier gains
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.g_proj):
            nn.init.xavier_uniform_(proj.weight, gain=2**-2.5)
        nn.init.xavier_uniform_(self.out_proj.weight, gain=2**-1)
        self.group_norm.reset_parameters()

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, chunk_size={self.chunk_size}, "
            f"negative_eigenvalues={self.negative_eigenvalues}, mode={self.mode!r}, "
            f"compute_dtype={self.compute_dtype!r}"
        )

    def auto_mode(self, seq_len: int) -> str:
        return "chunk"

    def log_decay(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """log gamma_h = log(1 - 2^(-5-h)), shape (H,)."""
        h = torch.arange(self.n_heads, dtype=torch.float64, device=device)
        return torch.log1p(-(2.0 ** (-5.0 - h))).to(dtype)

    def alternating(self, position: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(-1)^position on the odd heads, 1 on the even ones: shape (*position.shape[:1], H,
        *position.shape[1:]), for an integer ``position`` (B,) or (B, T)."""
        parity = 1.0 - 2.0 * torch.remainder(position, 2).to(dtype)
        odd = torch.arange(self.n_heads, device=position.device) % 2 == 1
        odd = odd.view(1, -1, *(1,) * (position.dim() - 1))
        return torch.where(odd, parity.unsqueeze(1), torch.ones_like(parity.unsqueeze(1)))

    def _forward(
        self, x: torch.Tensor, state: dict, mask: torch.Tensor | None, mode: str
    ) -> tuple[torch.Tensor, dict]:
        batch, seq_len, _ = x.shape
        heads, width = self.n_heads, self.head_dim
        if seq_len == 0:
            return x.new_zeros(x.shape), state

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, H, T, d)
            return t.view(batch, seq_len, heads, width).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))

        # positions: real tokens seen before each step (masked steps do not count)
        pos0 = state["pos"]
        if mask is None:
            before = torch.arange(seq_len, device=x.device).expand(batch, seq_len)
            seen = seq_len
        else:
            before = mask.long().cumsum(dim=1) - mask.long()
            seen = mask.long().sum(dim=1)
        angle = (pos0[:, None] + before).to(torch.float64)[..., None] * rotation_angles(width).to(
            x.device
        )  # (B, T, d/2), in float64 so long streams keep exact angles
        cos = angle.cos().to(x.dtype).unsqueeze(1)
        sin = angle.sin().to(x.dtype).unsqueeze(1)
        q = rotate(q, cos, sin)
        k = rotate(k, cos, sin) * width**-0.5
        kv = state["kv"]
        if self.negative_eigenvalues:  # odd heads: q, k and the state times (-1)^position
            flip = self.alternating(pos0[:, None] + before, x.dtype)  # (B, H, T)
            q, k = q * flip.unsqueeze(-1), k * flip.unsqueeze(-1)
            kv = kv * self.alternating(pos0 - 1, x.dtype)[..., None, None]

        g = self.log_decay(x.device, x.dtype)[None, :, None].expand(batch, heads, seq_len)
        if mask is not None:
            keep = mask[:, None, :]  # (B, 1, T)
            g = torch.where(keep, g, torch.zeros_like(g))
            k = torch.where(keep[..., None], k, torch.zeros_like(k))

        o, kv = linear_attention(
            q, k, v, g, kv, mode, self.chunk_size, compute_dtype=self.compute_dtype
        )
        if self.negative_eigenvalues:  # back from the op's (-1)^n-scaled state
            kv = kv * self.alternating(pos0 + seen - 1, x.dtype)[..., None, None]
        # GroupNorm over each head's outputs, per token
        o = o.transpose(1, 2).reshape(batch * seq_len, self.d_model)
        o = F.group_norm(
            o, heads, self.group_norm.weight, self.group_norm.bias, self.group_norm.eps
        )
        o = o.view(batch, seq_len, self.d_model)
        y = self.out_proj(F.silu(self.g_proj(x)) * o)
        return y, {"kv": kv, "pos": pos0 + seen}

    def _step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        y, state = self._forward(x_t.unsqueeze(1), state, None, "recurrent")
        return y.squeeze(1), state

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict:
        width = self.head_dim
        return {
            "kv": torch.zeros(batch_size, self.n_heads, width, width, device=device, dtype=dtype),
            "pos": torch.zeros(batch_size, device=device, dtype=torch.long),
        }
