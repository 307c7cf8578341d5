"""HGRN2 (Qin et al. 2024, "HGRN2: Gated Linear RNNs with State Expansion"): HGRN whose
state is expanded by an outer product, i.e. gated linear attention with the key tied to the
forget gate.

Per head h (H heads of width d = D / H, the paper's expand ratio; the state is d x d):

    f_t = gamma + (1 - gamma) * sigmoid(W_f x_t)_h      forget gate in (gamma, 1), (d,)
    k_t = 1 - f_t = (1 - gamma) * sigmoid(-W_f x_t)_h  input gate tied to the forget gate
    q_t = silu(W_q x_t)_h                              the output gate, read as the query
    v_t = (W_v x_t)_h                                  the input, no activation
    S_t = diag(f_t) S_{t-1} + k_t v_t^T                (S: d x d, rows key, cols value)
    o_t = S_t^T q_t                                    (d,)
    y_t = W_o LayerNorm(o_t)                           LayerNorm over the D concatenated heads

gamma = gamma^k is HGRN's forget-gate lower bound of layer k of n_layers (deeper layers
remember longer), the fixed schedule gamma^k = k / n_layers of :mod:`statewise.layers.hgrn`
(the paper learns it; see there). These are the equations of the paper's figure 1 (SiLU
query, linear input, sigmoid forget gate with the bound, LayerNorm, output Linear): the
output gate of HGRN1 has become the query, so there is no separate output gate.

Unrolled it is gated linear attention with per-key-channel decays: o_t = sum_{s<=t} sum_c
q_tc k_sc prod_{j=s+1..t} f_jc v_s, run by :mod:`statewise.ops.gated_linear_attention`
with log-decays g_t = log f_t = log1p(-k_t) (logsigmoid(W_f x_t) when gamma = 0; accurate
near f = 1, see :func:`log_forget`) in mode "recurrent" (the loop over time) or "chunk"
(chunkwise, float32-stable for any decay). Masked steps use g = 0 and k = 0: the state
passes through unchanged.

Differences from flash-linear-attention's ``HGRN2Attention``: LayerNorm (the paper) instead
of its RMSNorm; a fixed lower-bound schedule instead of the learned one; no short
convolution (off by default there too); heads given by ``n_heads`` or ``expand_ratio``
(fla's ``expand_ratio`` = d, default 128). The paper's standalone code (hgru2-pytorch) uses a
sigmoid query and a SiLU input and biases; we follow the paper's figure and fla.

auto mode: "recurrent" for one token, else "chunk": measured on this machine (torch 2.13, fp32,
1 thread, shared, CPU time, the whole layer at d_model 256, H 4, B 8, forward + backward):
T = 512: chunk 219-265 ms, recurrent 593-818 ms; T = 2048: 948-1007 ms vs 1802-1866 ms;
without gradients about equal at T = 512, chunk faster below (docs/models/hgrn2.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError
from statewise.layers.base import SequenceMixer
from statewise.layers.checks import positive_int
from statewise.layers.gateloop import (
    check_chunk_size,
    check_heads,
    merge_heads,
    skip_masked_steps,
    split_heads,
)
from statewise.layers.hgrn import lower_bound
from statewise.layers.registry import register
from statewise.ops.gated_linear_attention import gated_linear_attention
from statewise.ops.linear_attention import check_compute_dtype

DEFAULT_HEADS = 4


def head_count(d_model: int, n_heads: int | None, expand_ratio: int | None) -> int:
    """H from ``n_heads`` or from the paper's ``expand_ratio`` (the head width d = D / H);
    ``DEFAULT_HEADS`` if neither is given. ArgumentError if both are, or if they don't fit."""
    if n_heads is not None and expand_ratio is not None:
        raise ArgumentError(
            f"give n_heads or expand_ratio, not both (got {n_heads!r} and {expand_ratio!r})"
        )
    if expand_ratio is None:
        return DEFAULT_HEADS if n_heads is None else n_heads
    positive_int("expand_ratio", expand_ratio)
    if d_model % expand_ratio:
        raise ArgumentError(f"expand_ratio={expand_ratio} must divide d_model={d_model}")
    return d_model // expand_ratio


def log_forget(z: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log f, 1 - f) for f = floor + (1 - floor) sigmoid(z), both to a few ulps relative.

    1 - f = (1 - floor) sigmoid(-z) directly (no cancellation), then log f = log1p(-(1 - f)):
    for f near 1, log f ~ -(1 - f) keeps its digits. log(f) of a rounded f is 0 there, and
    fla's logaddexp(log floor, log(1 - floor) + logsigmoid(z)) carries an absolute error of
    an ulp of log(1 - floor): in float32 over z in [-40, 40] (against float64) it gives
    log f = 0 or up to 3x off at floor 1/3, and nothing closer to 0 than -7e-9 at floor 0.9
    (true values down to -4e-19); this form is within 2e-6 relative. Without a floor,
    log f = logsigmoid(z), which stays finite where sigmoid(-z) rounds to 1.
    """
    k = (1.0 - floor) * torch.sigmoid(-z) if floor else torch.sigmoid(-z)
    return (torch.log1p(-k) if floor else F.logsigmoid(z)), k


@register(
    "hgrn2",
    family="matrix state",
    paper="Qin et al. 2024, HGRN2: Gated Linear RNNs with State Expansion",
    state_size="d * d // 4",
)
class HGRN2(SequenceMixer):
    """HGRN2's token mixer: a d x d state per head, forget gate as decay, 1 - forget as key.

    Args:
        d_model: input and output width D.
        n_heads: number of heads H (must divide D); default 4 unless ``expand_ratio`` is given.
        expand_ratio: the paper's (and fla's) expand ratio, the head width d; H = D / d.
        layer_index, n_layers: position of this layer in the stack; the forget gate's
            lower bound is layer_index / n_layers (as HGRN).
        chunk_size: chunk length C of the chunkwise form, a power of two.
        norm_eps: epsilon of the LayerNorm.
        mode: "auto", "recurrent" or "chunk".
        compute_dtype: "float32" or "bfloat16": the dtype of the chunk form's GEMMs (see
            :func:`statewise.ops.linear_attention.resolve_compute_dtype`).

    State: {"kv": (B, H, d, d)}. Parameters (fla's names): q_proj, f_proj, i_proj, o_proj
    (Linear D -> D, no bias) and norm (LayerNorm over D): 4 D^2 + 2 D.
    """

    modes = ("recurrent", "chunk")

    def __init__(
        self,
        d_model: int,
        n_heads: int | None = None,
        expand_ratio: int | None = None,
        layer_index: int = 0,
        n_layers: int = 1,
        chunk_size: int = 64,
        norm_eps: float = 1e-5,
        mode: str = "auto",
        compute_dtype: str = "float32",
    ) -> None:
        super().__init__(d_model, mode)
        self.n_heads = head_count(d_model, n_heads, expand_ratio)
        self.head_dim = check_heads(d_model, self.n_heads)
        self.lower_bound = lower_bound(layer_index, n_layers)
        self.layer_index, self.n_layers = layer_index, n_layers
        self.chunk_size = check_chunk_size(chunk_size)
        self.compute_dtype = check_compute_dtype(compute_dtype)
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.f_proj = nn.Linear(d_model, d_model, bias=False)
        self.i_proj = nn.Linear(d_model, d_model, bias=False)
        self.norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
            f"lower_bound={self.lower_bound:g} (layer {self.layer_index} of {self.n_layers}), "
            f"chunk_size={self.chunk_size}, mode={self.mode!r}, "
            f"compute_dtype={self.compute_dtype!r}"
        )

    def auto_mode(self, seq_len: int) -> str:
        return "recurrent" if seq_len == 1 else "chunk"

    def _forward(
        self, x: torch.Tensor, state: dict, mask: torch.Tensor | None, mode: str
    ) -> tuple[torch.Tensor, dict]:
        if x.shape[1] == 0:
            return x.new_zeros(x.shape), state
        heads = self.n_heads
        g, k = log_forget(self.f_proj(x), self.lower_bound)
        q = split_heads(F.silu(self.q_proj(x)), heads)
        v = split_heads(self.i_proj(x), heads)
        k, g, _ = skip_masked_steps(split_heads(k, heads), split_heads(g, heads), None, mask)
        o, kv = gated_linear_attention(
            q,
            k,
            v,
            g,
            state["kv"],
            mode=mode,
            chunk_size=self.chunk_size,
            compute_dtype=self.compute_dtype,
        )
        return self.o_proj(self.norm(merge_heads(o))), {"kv": kv}

    def _step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        y, state = self._forward(x_t.unsqueeze(1), state, None, "recurrent")
        return y.squeeze(1), state

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict:
        d = self.head_dim
        return {"kv": torch.zeros(batch_size, self.n_heads, d, d, device=device, dtype=dtype)}
