"""Float64 reference recurrence of gated multi-scale retention (RetNet), from the paper.

Per token and head: rotate q and k by the position (pairs of features, angle n * theta_i),
scale k by d^-0.5, S = gamma_h S + k^T v (gamma_h -> -gamma_h on the odd heads with
negative eigenvalues), o = q S; GroupNorm per head from the mean and
variance formulas; y = W_O (swish(W_G x) * GroupNorm(o)).
"""

from __future__ import annotations

import math

import torch

from tests.reference.registry import reference


def _rotate_pairs(x: torch.Tensor, position: torch.Tensor, d: int) -> torch.Tensor:
    """Rotate features (2i, 2i+1) of x (B, d) by position (B,) * theta_i, one pair at a time."""
    half = d // 2
    out = torch.empty_like(x)
    for i in range(half):
        theta = 10000.0 ** (-(i / (half - 1))) if half > 1 else 1.0
        angle = position.to(torch.float64) * theta
        c, s = torch.cos(angle).to(x.dtype), torch.sin(angle).to(x.dtype)
        a, b = x[:, 2 * i], x[:, 2 * i + 1]
        out[:, 2 * i] = a * c - b * s
        out[:, 2 * i + 1] = b * c + a * s
    return out


@reference("retnet", n_heads=2, chunk_size=4)
@reference("retnet", variant="negative", n_heads=2, chunk_size=4, negative_eigenvalues=True)
def run(layer, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    batch, seq_len, width = x.shape
    heads = layer.n_heads
    d = width // heads
    gammas = [1.0 - 2.0 ** (-5 - h) for h in range(heads)]
    if getattr(layer, "negative_eigenvalues", False):  # odd heads: transition -gamma_h
        gammas = [-g if h % 2 else g for h, g in enumerate(gammas)]
    w_q, w_k, w_v = layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight
    w_g, w_o = layer.g_proj.weight, layer.out_proj.weight
    gn_w, gn_b, eps = layer.group_norm.weight, layer.group_norm.bias, layer.group_norm.eps
    kv = [state["kv"][:, h] for h in range(heads)]  # each (B, d, d)
    pos = state["pos"]
    ys = []
    for t in range(seq_len):
        x_t = x[:, t]
        q_all, k_all, v_all = x_t @ w_q.T, x_t @ w_k.T, x_t @ w_v.T
        normed = []
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            q = _rotate_pairs(q_all[:, cols], pos, d)
            k = _rotate_pairs(k_all[:, cols], pos, d) / math.sqrt(d)
            v = v_all[:, cols]
            kv[h] = gammas[h] * kv[h] + k[:, :, None] * v[:, None, :]
            o = (q[:, :, None] * kv[h]).sum(dim=1)  # (B, d): q S
            mean = o.mean(dim=1, keepdim=True)
            var = ((o - mean) ** 2).mean(dim=1, keepdim=True)
            normed.append((o - mean) / torch.sqrt(var + eps) * gn_w[cols] + gn_b[cols])
        u = x_t @ w_g.T
        gate = u * (1.0 / (1.0 + torch.exp(-u)))
        ys.append((gate * torch.cat(normed, dim=1)) @ w_o.T)
        pos = pos + 1
    return torch.stack(ys, dim=1), {"kv": torch.stack(kv, dim=1), "pos": pos}
