"""GateLoop (Katsch 2023, "GateLoop: Fully Data-Controlled Linear Recurrence for Sequence
Modeling"), in its real form with a transition per head and key channel.

Per head h (head width d = d_model / H), with z_t = W_a x_t + b_a:

    q_t = (W_q x_t)_h,   k_t = (W_k x_t)_h / sqrt(d),   v_t = (W_v x_t)_h
    a_t = sigmoid(z_t)_h                                    (d,) in (0, 1), data-controlled
    S_t = diag(a_t) S_{t-1} + k_t^T v_t,   o_t = q_t S_t    (S: d x d per head)
    y_t = W_o (silu(W_g x_t) * LayerNorm(o_t))

Unrolled this is the paper's surrogate attention form o = (Q K^T * M) V with
M_ts = prod_{j=s+1..t} a_j, per key channel here: o_t = sum_{s<=t} sum_c q_tc k_sc M_tsc v_s.

Real, not complex: the paper's transition is a_t = sigmoid(|gamma_t|) exp(i arg gamma_t)
with complex gamma_t = W_a x_t (lucidrains/gateloop-transformer does the same, one complex
scalar per head). We keep the magnitude (a sigmoid) and drop the phase: a complex
transition makes the state complex (twice the floats), every chunk-form GEMM complex (about
4 real GEMMs each on CPU) and the float32-stable chunk form would need the phase sums
carried alongside the log-magnitudes; the phase's role, a data-controlled relative
position, is left to q and k (this real form is GLA's gating). The transition is per key
channel (as the paper's pseudocode, a_t broadcast over the value axis), not one scalar
per head (lucidrains). With
``negative_eigenvalues=True`` (Grazzi et al. 2025) a_t = 2 sigmoid(z_t) - 1 =
tanh(z_t / 2) in (-1, 1): a real phase of 0 or pi, the one part of the complex form that
matters for state tracking (parity).

Output: a LayerNorm over the D outputs, a SiLU gate from the input and an output
projection, as lucidrains' ``GateLoopedAttention(sub_ln=True, add_swish_gating=True)``;
keys are scaled by d^-1/2 (not in the paper or lucidrains; it keeps the state's scale
independent of the head width, and the LayerNorm removes it from the output anyway).
lucidrains' ``frac_gradient_state_transition`` (a gradient scale on the transition
projection) is left to the optimiser.

The recurrence runs through :mod:`statewise.ops.gated_linear_attention` with log-decays
g = logsigmoid(z) (or log|tanh(z/2)| and the sign of tanh(z/2)), in mode "recurrent" (per
token), "parallel" (the quadratic attention form with the full T x T x d decay tensor) or
"chunk" (chunkwise, float32-stable for any decay). Masked steps use g = 0, sign +1 and
k = 0: the state passes through unchanged.

auto mode: "recurrent" for T = 1 (step), else "chunk": measured on this machine (torch 2.13,
fp32, 1 thread, the whole layer at d_model 256, H 4, B 4, forward + backward): T = 64:
recurrent 95 ms, parallel 463 ms, chunk 50 ms; T = 1024: recurrent 949 ms, chunk 368 ms;
without gradients recurrent and chunk are about equal (docs/models/gateloop.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError
from statewise.layers.base import SequenceMixer
from statewise.layers.checks import flag, positive_int
from statewise.layers.registry import register
from statewise.ops.gated_linear_attention import gated_linear_attention
from statewise.ops.linear_attention import check_compute_dtype


def check_heads(d_model: int, n_heads: int) -> int:
    """The head width d_model / n_heads; ValueError unless n_heads is a positive divisor."""
    positive_int("n_heads", n_heads)
    if d_model % n_heads:
        raise ArgumentError(f"n_heads={n_heads} must divide d_model={d_model}")
    return d_model // n_heads


def check_chunk_size(chunk_size: int) -> int:
    """A power of two (the chunk form halves chunks down to single steps)."""
    positive_int("chunk_size", chunk_size)
    if chunk_size & (chunk_size - 1):
        raise ArgumentError(f"chunk_size must be a power of two, got {chunk_size}")
    return chunk_size


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, H * d) -> (B, H, T, d)."""
    batch, seq_len, width = x.shape
    return x.view(batch, seq_len, heads, width // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, d) -> (B, T, H * d)."""
    batch, heads, seq_len, width = x.shape
    return x.transpose(1, 2).reshape(batch, seq_len, heads * width)


def skip_masked_steps(
    k: torch.Tensor, g: torch.Tensor, sign: torch.Tensor | None, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """k = 0, g = 0 and sign = +1 where ``mask`` (B, T) is False: the state passes through."""
    if mask is None:
        return k, g, sign
    keep = mask[:, None, :, None]  # (B, 1, T, 1) against (B, H, T, d)
    k = torch.where(keep, k, torch.zeros_like(k))
    g = torch.where(keep, g, torch.zeros_like(g))
    if sign is not None:
        sign = torch.where(keep, sign, torch.ones_like(sign))
    return k, g, sign


def transition_init(d_model: int, head_dim: int) -> torch.Tensor:
    """Bias of the transition: sigmoid(b) from 0.9 to 0.999 (time scales 10 to 1000 steps)
    across each head's channels, so every head sees short and long memories at init."""
    one_minus_a = torch.logspace(-1.0, -3.0, head_dim, dtype=torch.float64)
    a = 1.0 - one_minus_a
    return torch.log(a / one_minus_a).repeat(d_model // head_dim).float()


@register(
    "gateloop",
    family="matrix state",
    paper="Katsch 2023, GateLoop: Fully Data-Controlled Linear Recurrence",
    state_size="d * d // 4",
)
class GateLoop(SequenceMixer):
    """GateLoop: linear attention with a data-controlled transition per key channel.

    Args:
        d_model: input and output width D.
        n_heads: number of heads H (must divide D); head width d = D / H.
        chunk_size: chunk length C of the chunkwise form, a power of two.
        negative_eigenvalues: transition 2 sigmoid(z) - 1 in (-1, 1) instead of
            sigmoid(z) in (0, 1) (Grazzi et al. 2025).
        mode: "auto", "recurrent", "parallel" or "chunk".
        compute_dtype: "float32" or "bfloat16": the dtype of the chunk form's GEMMs (the
            state and its sums across chunks stay in the input dtype; see
            :func:`statewise.ops.linear_attention.resolve_compute_dtype`).

    State: {"kv": (B, H, d, d)}. Parameters: q_proj, k_proj, v_proj, g_proj, out_proj
    (Linear D -> D, no bias), a_proj (Linear D -> D with bias), norm (LayerNorm over D):
    6 D^2 + 3 D.
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
        self.head_dim = check_heads(d_model, n_heads)
        self.n_heads = n_heads
        self.chunk_size = check_chunk_size(chunk_size)
        self.compute_dtype = check_compute_dtype(compute_dtype)
        flag("negative_eigenvalues", negative_eigenvalues)
        self.negative_eigenvalues = negative_eigenvalues
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.a_proj = nn.Linear(d_model, d_model)
        self.g_proj = nn.Linear(d_model, d_model, bias=False)
        self.norm = nn.LayerNorm(d_model)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.a_proj, self.g_proj):
            nn.init.xavier_uniform_(proj.weight, gain=2**-2.5)
        nn.init.xavier_uniform_(self.out_proj.weight, gain=2**-1)
        with torch.no_grad():
            self.a_proj.bias.copy_(transition_init(self.d_model, self.head_dim))
        self.norm.reset_parameters()

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, chunk_size={self.chunk_size}, "
            f"negative_eigenvalues={self.negative_eigenvalues}, mode={self.mode!r}, "
            f"compute_dtype={self.compute_dtype!r}"
        )

    def auto_mode(self, seq_len: int) -> str:
        return "recurrent" if seq_len == 1 else "chunk"

    def transition(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(log |a|, sign of a or None) from the pre-activation z: a = sigmoid(z), or
        2 sigmoid(z) - 1 = tanh(z / 2) with negative eigenvalues (sign treated as constant)."""
        if not self.negative_eigenvalues:
            return F.logsigmoid(z), None
        a = torch.tanh(0.5 * z)
        sign = torch.where(a < 0, -torch.ones_like(a), torch.ones_like(a)).detach()
        return torch.log(a.abs()), sign

    def _forward(
        self, x: torch.Tensor, state: dict, mask: torch.Tensor | None, mode: str
    ) -> tuple[torch.Tensor, dict]:
        if x.shape[1] == 0:
            return x.new_zeros(x.shape), state
        heads = self.n_heads
        q = split_heads(self.q_proj(x), heads)
        k = split_heads(self.k_proj(x), heads) * self.head_dim**-0.5
        v = split_heads(self.v_proj(x), heads)
        g, sign = self.transition(split_heads(self.a_proj(x), heads))
        k, g, sign = skip_masked_steps(k, g, sign, mask)
        o, kv = gated_linear_attention(
            q,
            k,
            v,
            g,
            state["kv"],
            sign=sign,
            mode=mode,
            chunk_size=self.chunk_size,
            compute_dtype=self.compute_dtype,
        )
        y = self.out_proj(F.silu(self.g_proj(x)) * self.norm(merge_heads(o)))
        return y, {"kv": kv}

    def _step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        y, state = self._forward(x_t.unsqueeze(1), state, None, "recurrent")
        return y.squeeze(1), state

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict:
        d = self.head_dim
        return {"kv": torch.zeros(batch_size, self.n_heads, d, d, device=device, dtype=dtype)}
