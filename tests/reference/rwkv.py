"""Float64 reference recurrence of one RWKV-6 block (time mixing + channel mixing), from the
paper's equations and BlinkDL's RNN-mode description (RWKV-v5/rwkv_v6_demo.py).

Per token: token shift from the carried previous inputs, ddlerp LoRA, r/k/v/gate, decay
w = exp(-exp(d)), per head o = r (u k^T v + S), S = w S + k^T v; GroupNorm per head and
LayerNorm from the mean and variance formulas; y = a + ChannelMix(ln2(x + a)).
"""

from __future__ import annotations

import torch

from tests.reference.formulas import sigmoid
from tests.reference.registry import reference


def _normalise(x: torch.Tensor, weight, bias, eps: float) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def _time_mix(att, x_t, prev, wkv, heads):
    """One token of RWKV_Tmix_x060; wkv is a list of per-head (B, d, d) states (updated)."""
    width = x_t.shape[1]
    d = width // heads
    dx = prev - x_t
    lora = torch.tanh((x_t + dx * att.time_maa_x) @ att.time_maa_w1)  # (B, 5R)
    rank = att.time_maa_w2.shape[1]
    mix = [lora[:, i * rank : (i + 1) * rank] @ att.time_maa_w2[i] for i in range(5)]
    statics = [att.time_maa_w, att.time_maa_k, att.time_maa_v, att.time_maa_r, att.time_maa_g]
    x_w, x_k, x_v, x_r, x_g = (x_t + dx * (mu + m) for mu, m in zip(statics, mix))
    r = x_r @ att.receptance.weight.T
    k = x_k @ att.key.weight.T
    v = x_v @ att.value.weight.T
    gate_in = x_g @ att.gate.weight.T
    gate = gate_in * sigmoid(gate_in)
    decay = att.time_decay + torch.tanh(x_w @ att.time_decay_w1) @ att.time_decay_w2
    w = torch.exp(-torch.exp(decay))
    outs = []
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        kv = k[:, cols, None] * v[:, None, cols]  # (B, d, d): k^T v
        u = att.time_faaaa[h][None, :, None]
        o = (r[:, cols, None] * (u * kv + wkv[h])).sum(dim=1)
        wkv[h] = w[:, cols, None] * wkv[h] + kv
        gn = att.ln_x
        outs.append(_normalise(o, gn.weight[cols], gn.bias[cols], gn.eps))
    return (torch.cat(outs, dim=1) * gate) @ att.output.weight.T


def _channel_mix(ffn, c_t, prev):
    dc = prev - c_t
    c_k, c_r = c_t + dc * ffn.time_maa_k, c_t + dc * ffn.time_maa_r
    hidden = torch.relu(c_k @ ffn.key.weight.T) ** 2
    return sigmoid(c_r @ ffn.receptance.weight.T) * (hidden @ ffn.value.weight.T)


_SMALL = dict(n_heads=2, ffn_ratio=2.0, mix_lora_rank=3, decay_lora_rank=4, chunk_size=4)


@reference("rwkv", **_SMALL)
@reference("rwkv", variant="time_mix_only", channel_mix=False, **_SMALL)
def run(layer, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    heads = layer.n_heads
    wkv = [state["wkv"][:, h] for h in range(heads)]
    att_prev = state["att_shift"]
    ffn_prev = state.get("ffn_shift")
    ys = []
    for t in range(x.shape[1]):
        x_t = x[:, t]
        a = _time_mix(layer.att, x_t, att_prev, wkv, heads)
        att_prev = x_t
        if layer.ffn is None:
            ys.append(a)
            continue
        c = _normalise(x_t + a, layer.ln2.weight, layer.ln2.bias, layer.ln2.eps)
        ys.append(a + _channel_mix(layer.ffn, c, ffn_prev))
        ffn_prev = c
    final = {"att_shift": att_prev, "wkv": torch.stack(wkv, dim=1)}
    if layer.ffn is not None:
        final["ffn_shift"] = ffn_prev
    return torch.stack(ys, dim=1), final
