"""RWKV-6 "Finch" (Peng et al. 2024, "Eagle and Finch: RWKV with Matrix-Valued States and
Dynamic Recurrence"): time mixing and channel mixing of one RWKV-6 block in one mixer.

The mixer receives h = norm_1(x) from the model block and returns

    a = TimeMix(h)                  (the "att" half of an RWKV block)
    y = a + ChannelMix(ln2(h + a))  (the "ffn" half, its LayerNorm ln2 inside the mixer)

so a block with mlp_ratio = 0 and norm = "layernorm" computes x + a + ffn(ln2(ln1(x) + a)).
RWKV-6's block is x1 = x + att(ln1(x)), x + ... = x1 + ffn(ln2(x1)): the same, except that
the channel mix reads ln2(ln1(x) + a) instead of ln2(x + a), because the contract hands
a mixer only norm_1(x), never the residual stream x itself. (RWKV's extra ln0 after the
embedding belongs to the model, not the block.) ``channel_mix=False`` drops the second
half (y = a), for models that use the block's own MLP instead.

Time mixing, per token (prev = the previous token's h, from the state at t = 1):

    dx = prev - h
    m_w, m_k, m_v, m_r, m_g = (tanh((h + dx * mu_x) W_1) viewed as 5 x R) @ W_2[i]   (ddlerp LoRA)
    h_* = h + dx * (mu_* + m_*)                          for * in w, k, v, r, g
    r = W_r h_r,  k = W_k h_k,  v = W_v h_v,  gate = silu(W_g h_g)
    d_t = decay + tanh(h_w D_1) D_2,   w_t = exp(-exp(d_t))  in (0, 1), per channel
    per head:  o_t = r_t (S_{t-1} + diag(u) k_t^T v_t),  S_t = diag(w_t) S_{t-1} + k_t^T v_t
    a = W_o (GroupNorm_H(o) * gate)                     (GroupNorm eps 64e-5, as RWKV-6)

Channel mixing on c = ln2(h + a) (prev_c = the previous token's c):

    dc = prev_c - c,   c_k = c + dc * mu_k,   c_r = c + dc * mu_r
    f = sigmoid(W_r' c_r) * (W_v' relu(W_k' c_k)^2)

The WKV recurrence is :func:`statewise.ops.gated_linear_attention.gated_linear_attention`
with the bonus u and log-decay g = -exp(d_t), in mode "recurrent" (per token) or "chunk"
(float32-stable however strong the decay). State: the two token-shift vectors and the
WKV state. Masked steps use g = 0, k = 0 (the WKV state passes through) and are skipped by
the token shifts (the previous token of a real step is the last real token before it).

Parameter names follow BlinkDL's RWKV-6 (``att.time_maa_x`` ... ``att.time_faaaa``,
``att.receptance``, ``ffn.key`` ..., ``ln2``) so a checkpoint's block maps name for name;
the initialisation is RWKV-6's (layer-dependent, from ``layer_index`` and ``n_layers``,
which the model passes). transformers' ``RwkvModel`` is RWKV-4 (a vector state, no
matrix-valued WKV, no data-dependent decay or token shift): it does not map onto this
layer and is not used as a cross-check.

auto mode: "recurrent" for T = 1 (step), else "chunk": measured on this machine (torch 2.13,
fp32, 1 thread, d_model 256, H 4, B 4, forward + backward): T = 64: recurrent 83 ms, chunk
43 ms; T = 1024: 1472 ms vs 629 ms; without gradients about equal (docs/models/rwkv.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError
from statewise.layers.base import SequenceMixer
from statewise.layers.checks import flag, no_weight_decay, positive_int
from statewise.layers.gateloop import (
    check_chunk_size,
    check_heads,
    merge_heads,
    skip_masked_steps,
    split_heads,
)
from statewise.layers.registry import register
from statewise.ops.gated_linear_attention import gated_linear_attention
from statewise.ops.linear_attention import check_compute_dtype

GROUP_NORM_EPS = 64e-5  # RWKV-6: 1e-5 * head_size_divisor^2 with head_size_divisor = 8


def token_shift(
    x: torch.Tensor, last: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prev, new_last): prev[:, t] = x at the last real step before t (``last`` if none),
    new_last = x at the last real step (``last`` if none). x: (B, T, D), last: (B, D)."""
    if mask is None:
        return torch.cat([last.unsqueeze(1), x[:, :-1]], dim=1), x[:, -1]
    batch, seq_len, width = x.shape
    steps = torch.arange(seq_len, device=x.device).expand(batch, seq_len)
    latest = torch.where(mask, steps, -1).cummax(dim=1).values  # last real step <= t
    before = torch.cat([latest.new_full((batch, 1), -1), latest[:, :-1]], dim=1)
    padded = torch.cat([last.unsqueeze(1), x], dim=1)  # index 0 is ``last``
    prev = padded.gather(1, (before + 1).unsqueeze(-1).expand(batch, seq_len, width))
    return prev, padded[torch.arange(batch, device=x.device), latest[:, -1] + 1]


def _ramp(width: int) -> torch.Tensor:
    """i / width for i = 0 .. width-1: RWKV's per-channel init ramp ("ddd")."""
    return torch.arange(width, dtype=torch.float64) / width


def _orthogonal(weight: torch.Tensor, gain: float) -> None:
    if gain == 0.0:
        nn.init.zeros_(weight)
    else:
        nn.init.orthogonal_(weight, gain=gain)


class TimeMix(nn.Module):
    """RWKV-6 time mixing (``RWKV_Tmix_x060``): ddlerp token shift, data-dependent decay,
    multi-head WKV with bonus, GroupNorm per head, SiLU output gate."""

    def __init__(
        self, d_model: int, n_heads: int, mix_lora_rank: int, decay_lora_rank: int
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.time_maa_x = nn.Parameter(torch.empty(d_model))
        self.time_maa_w = nn.Parameter(torch.empty(d_model))
        self.time_maa_k = nn.Parameter(torch.empty(d_model))
        self.time_maa_v = nn.Parameter(torch.empty(d_model))
        self.time_maa_r = nn.Parameter(torch.empty(d_model))
        self.time_maa_g = nn.Parameter(torch.empty(d_model))
        self.time_maa_w1 = nn.Parameter(torch.empty(d_model, 5 * mix_lora_rank))
        self.time_maa_w2 = nn.Parameter(torch.empty(5, mix_lora_rank, d_model))
        self.time_decay = nn.Parameter(torch.empty(d_model))
        self.time_decay_w1 = nn.Parameter(torch.empty(d_model, decay_lora_rank))
        self.time_decay_w2 = nn.Parameter(torch.empty(decay_lora_rank, d_model))
        self.time_faaaa = nn.Parameter(torch.empty(n_heads, self.head_dim))  # the bonus u
        # RWKV-LM trains its time_* parameters (the mixes, the decay and their LoRAs) without
        # weight decay
        no_weight_decay(self.time_maa_w1, self.time_maa_w2, self.time_decay_w1)
        no_weight_decay(self.time_decay_w2, self.time_faaaa)
        # and RWKV-LM's RWKV-6 trainer (layerwise_lr on) puts time_decay, the base of the
        # data-dependent decay, in its 2x learning-rate group (its LoRAs _w1/_w2 stay at 1x)
        self.time_decay._optim = {"lr_scale": 2.0}
        self.receptance = nn.Linear(d_model, d_model, bias=False)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model, bias=False)
        self.gate = nn.Linear(d_model, d_model, bias=False)
        self.output = nn.Linear(d_model, d_model, bias=False)
        self.ln_x = nn.GroupNorm(n_heads, d_model, eps=GROUP_NORM_EPS)

    @torch.no_grad()
    def reset_parameters(self, layer_index: int, n_layers: int) -> None:
        """RWKV-6's initialisation for block ``layer_index`` of ``n_layers``."""
        width = self.time_maa_x.numel()
        ratio_0_to_1 = layer_index / (n_layers - 1) if n_layers > 1 else 0.0
        ratio_1_to_0 = 1.0 - layer_index / n_layers
        ramp = _ramp(width)
        for name, power, offset in (
            ("x", ratio_1_to_0, 0.0),
            ("w", ratio_1_to_0, 0.0),
            ("k", ratio_1_to_0, 0.0),
            ("v", ratio_1_to_0, 0.3 * ratio_0_to_1),
            ("r", 0.5 * ratio_1_to_0, 0.0),
            ("g", 0.5 * ratio_1_to_0, 0.0),
        ):
            getattr(self, f"time_maa_{name}").copy_(1.0 - (ramp**power + offset))
        nn.init.zeros_(self.time_maa_w1)
        nn.init.uniform_(self.time_maa_w2, -0.01, 0.01)
        n = torch.arange(width, dtype=torch.float64) / max(width - 1, 1)
        self.time_decay.copy_(-6.0 + 5.0 * n ** (0.7 + 1.3 * ratio_0_to_1))
        nn.init.zeros_(self.time_decay_w1)
        nn.init.uniform_(self.time_decay_w2, -0.01, 0.01)
        zigzag = ((torch.arange(width) + 1) % 3 - 1).double() * 0.1
        self.time_faaaa.copy_((ratio_0_to_1 * (1.0 - n) + zigzag).view_as(self.time_faaaa))
        for proj, gain in (
            (self.receptance, 1.0),
            (self.key, 0.1),
            (self.value, 1.0),
            (self.gate, 0.1),
            (self.output, 0.0),
        ):
            _orthogonal(proj.weight, gain)
        self.ln_x.weight.fill_(((1 + layer_index) / n_layers) ** 0.7)
        self.ln_x.bias.zero_()

    def mixed_inputs(self, h: torch.Tensor, prev: torch.Tensor) -> list[torch.Tensor]:
        """The data-dependent lerps h_w, h_k, h_v, h_r, h_g between h and the previous token."""
        dx = prev - h
        lora = torch.tanh((h + dx * self.time_maa_x) @ self.time_maa_w1)
        lora = lora.view(*h.shape[:-1], 5, -1)  # (B, T, 5, R)
        mixes = torch.einsum("btir,ird->btid", lora, self.time_maa_w2).unbind(dim=2)
        statics = (
            self.time_maa_w,
            self.time_maa_k,
            self.time_maa_v,
            self.time_maa_r,
            self.time_maa_g,
        )
        return [h + dx * (mu + m) for mu, m in zip(statics, mixes)]

    def forward(
        self,
        h: torch.Tensor,
        prev: torch.Tensor,
        wkv: torch.Tensor,
        mask: torch.Tensor | None,
        mode: str,
        chunk_size: int,
        compute_dtype: str = "float32",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, new WKV state) for inputs h (B, T, D) whose previous tokens are prev."""
        heads = self.n_heads
        h_w, h_k, h_v, h_r, h_g = self.mixed_inputs(h, prev)
        r = split_heads(self.receptance(h_r), heads)
        k = split_heads(self.key(h_k), heads)
        v = split_heads(self.value(h_v), heads)
        decay = self.time_decay + torch.tanh(h_w @ self.time_decay_w1) @ self.time_decay_w2
        g = -torch.exp(split_heads(decay, heads))  # log w_t
        k, g, _ = skip_masked_steps(k, g, None, mask)
        o, wkv = gated_linear_attention(
            r,
            k,
            v,
            g,
            wkv,
            bonus=self.time_faaaa,
            mode=mode,
            chunk_size=chunk_size,
            compute_dtype=compute_dtype,
        )
        o = merge_heads(o)
        o = F.group_norm(
            o.reshape(-1, o.shape[-1]), heads, self.ln_x.weight, self.ln_x.bias, self.ln_x.eps
        ).view(o.shape)
        return self.output(o * F.silu(self.gate(h_g))), wkv


class ChannelMix(nn.Module):
    """RWKV-6 channel mixing (``RWKV_CMix_x060``): token shift, squared ReLU, receptance gate."""

    def __init__(self, d_model: int, d_ffn: int) -> None:
        super().__init__()
        self.time_maa_k = nn.Parameter(torch.empty(d_model))
        self.time_maa_r = nn.Parameter(torch.empty(d_model))
        self.key = nn.Linear(d_model, d_ffn, bias=False)
        self.receptance = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_ffn, d_model, bias=False)

    @torch.no_grad()
    def reset_parameters(self, layer_index: int, n_layers: int) -> None:
        mu = 1.0 - _ramp(self.time_maa_k.numel()) ** (1.0 - layer_index / n_layers)
        self.time_maa_k.copy_(mu)
        self.time_maa_r.copy_(mu)
        _orthogonal(self.key.weight, 1.0)
        _orthogonal(self.receptance.weight, 0.0)
        _orthogonal(self.value.weight, 0.0)

    def forward(self, c: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        dc = prev - c
        c_k, c_r = c + dc * self.time_maa_k, c + dc * self.time_maa_r
        return torch.sigmoid(self.receptance(c_r)) * self.value(torch.relu(self.key(c_k)) ** 2)


HEAD_SIZE = 64  # RWKV-6's head size


def default_heads(d_model: int) -> int:
    """The most heads, each at least HEAD_SIZE wide, that divide d_model (at least 1): heads
    of exactly 64 when 64 divides d_model, one head below 128."""
    heads = max(1, d_model // HEAD_SIZE)
    while d_model % heads:
        heads -= 1
    return heads


@register(
    "rwkv",
    family="matrix state",
    paper="Peng et al. 2024, Eagle and Finch (RWKV-6)",
    state_size="2 * d + d * min(d, 64)",  # exact when d < 64 or 64 divides d
)
class RWKV6(SequenceMixer):
    """One RWKV-6 block's time mixing and channel mixing (see the module docstring).

    Args:
        d_model: input and output width D.
        n_heads: number of WKV heads H (must divide D); head size d = D / H. Default: heads
            of RWKV-6's size 64 (:func:`default_heads`), one head when D < 64. At d_model 64
            on MQAR with 8 pairs at length 128, one head of 64 reached 0.968 in 300 s where
            4 heads of 16 (the default until 2026-11-22) reached 0.634 (docs/arena.md).
        ffn_ratio: channel-mix hidden width d_ffn = round(ffn_ratio * D) (RWKV-6: 3.5).
        mix_lora_rank: rank R of the ddlerp LoRA (RWKV-6: 32).
        decay_lora_rank: rank of the decay LoRA (RWKV-6: 64).
        channel_mix: include the channel mixing (and ln2); False leaves the time mixing.
        chunk_size: chunk length of the chunkwise WKV, a power of two.
        layer_index, n_layers: the block's depth, for RWKV-6's initialisation.
        mode: "auto", "recurrent" or "chunk".
        compute_dtype: "float32" or "bfloat16": the dtype of the chunk form's GEMMs (the
            state and its sums across chunks stay in the input dtype; see
            :func:`statewise.ops.linear_attention.resolve_compute_dtype`).

    State: {"att_shift": (B, D), "wkv": (B, H, d, d), "ffn_shift": (B, D)} (no
    "ffn_shift" without channel mixing): 2 D + D^2 / H floats.
    Parameters (R = mix_lora_rank, R_d = decay_lora_rank, F = d_ffn): time mixing
    5 D^2 + 10 R D + 2 R_d D + 10 D (r/k/v/gate/output, the ddlerp LoRA, the decay LoRA,
    six maa vectors, decay, bonus, GroupNorm); channel mixing D^2 + 2 D F + 4 D (receptance,
    key, value, two maa vectors, ln2).
    """

    modes = ("recurrent", "chunk")

    def __init__(
        self,
        d_model: int,
        n_heads: int | None = None,
        ffn_ratio: float = 3.5,
        mix_lora_rank: int = 32,
        decay_lora_rank: int = 64,
        channel_mix: bool = True,
        chunk_size: int = 64,
        layer_index: int = 0,
        n_layers: int = 1,
        mode: str = "auto",
        compute_dtype: str = "float32",
    ) -> None:
        super().__init__(d_model, mode)
        if n_heads is None:
            n_heads = default_heads(d_model)
        self.head_dim = check_heads(d_model, n_heads)
        self.n_heads = n_heads
        self.chunk_size = check_chunk_size(chunk_size)
        self.compute_dtype = check_compute_dtype(compute_dtype)
        for name, value in (("mix_lora_rank", mix_lora_rank), ("decay_lora_rank", decay_lora_rank)):
            positive_int(name, value)
        if isinstance(ffn_ratio, bool) or not isinstance(ffn_ratio, (int, float)) or ffn_ratio <= 0:
            raise ArgumentError(f"ffn_ratio must be a positive number, got {ffn_ratio!r}")
        flag("channel_mix", channel_mix)
        if not (isinstance(n_layers, int) and isinstance(layer_index, int)) or not (
            0 <= layer_index < n_layers
        ):
            raise ArgumentError(
                f"need 0 <= layer_index < n_layers, got layer_index={layer_index!r}, "
                f"n_layers={n_layers!r}"
            )
        self.layer_index, self.n_layers = layer_index, n_layers
        self.d_ffn = max(1, round(ffn_ratio * d_model))
        self.att = TimeMix(d_model, n_heads, mix_lora_rank, decay_lora_rank)
        if channel_mix:
            self.ln2 = nn.LayerNorm(d_model)
            self.ffn = ChannelMix(d_model, self.d_ffn)
        else:
            self.ln2 = self.ffn = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.att.reset_parameters(self.layer_index, self.n_layers)
        if self.ffn is not None:
            self.ln2.reset_parameters()
            self.ffn.reset_parameters(self.layer_index, self.n_layers)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, d_ffn={self.d_ffn}, "
            f"channel_mix={self.ffn is not None}, chunk_size={self.chunk_size}, "
            f"mode={self.mode!r}, compute_dtype={self.compute_dtype!r}"
        )

    def auto_mode(self, seq_len: int) -> str:
        return "recurrent" if seq_len == 1 else "chunk"

    def _forward(
        self, x: torch.Tensor, state: dict, mask: torch.Tensor | None, mode: str
    ) -> tuple[torch.Tensor, dict]:
        if x.shape[1] == 0:
            return x.new_zeros(x.shape), state
        prev, att_shift = token_shift(x, state["att_shift"], mask)
        a, wkv = self.att(x, prev, state["wkv"], mask, mode, self.chunk_size, self.compute_dtype)
        new_state = {"att_shift": att_shift, "wkv": wkv}
        if self.ffn is None:
            return a, new_state
        c = self.ln2(x + a)
        prev_c, new_state["ffn_shift"] = token_shift(c, state["ffn_shift"], mask)
        return a + self.ffn(c, prev_c), new_state

    def _step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        y, state = self._forward(x_t.unsqueeze(1), state, None, "recurrent")
        return y.squeeze(1), state

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict:
        d, width = self.head_dim, self.d_model
        state = {
            "att_shift": torch.zeros(batch_size, width, device=device, dtype=dtype),
            "wkv": torch.zeros(batch_size, self.n_heads, d, d, device=device, dtype=dtype),
        }
        if self.ffn is not None:
            state["ffn_shift"] = torch.zeros(batch_size, width, device=device, dtype=dtype)
        return state
