"""Float64 reference recurrence of GateLoop (real form), from the paper's equations.

Per token and head: a = sigmoid(z) (or 2 sigmoid(z) - 1 with negative eigenvalues) per key
channel, S = diag(a) S + k^T v with k scaled by d^-0.5, o = q S; LayerNorm over the
concatenated heads from the mean and variance formulas; y = W_o (silu(W_g x) * LN(o)).
"""

from __future__ import annotations

import math

import torch

from tests.reference.formulas import sigmoid
from tests.reference.registry import reference


@reference("gateloop", n_heads=2, chunk_size=4)
@reference("gateloop", variant="negative", n_heads=2, chunk_size=4, negative_eigenvalues=True)
def run(layer, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    batch, seq_len, width = x.shape
    heads = layer.n_heads
    d = width // heads
    w_q, w_k, w_v = layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight
    w_a, b_a = layer.a_proj.weight, layer.a_proj.bias
    w_g, w_o = layer.g_proj.weight, layer.out_proj.weight
    ln_w, ln_b, eps = layer.norm.weight, layer.norm.bias, layer.norm.eps
    kv = [state["kv"][:, h] for h in range(heads)]  # each (B, d, d): rows key, cols value
    ys = []
    for t in range(seq_len):
        x_t = x[:, t]
        q_all, k_all, v_all = x_t @ w_q.T, x_t @ w_k.T, x_t @ w_v.T
        a_all = sigmoid(x_t @ w_a.T + b_a)
        if layer.negative_eigenvalues:
            a_all = 2.0 * a_all - 1.0
        outs = []
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            q, k, v = q_all[:, cols], k_all[:, cols] / math.sqrt(d), v_all[:, cols]
            kv[h] = a_all[:, cols, None] * kv[h] + k[:, :, None] * v[:, None, :]
            outs.append((q[:, :, None] * kv[h]).sum(dim=1))  # (B, d): q S
        o = torch.cat(outs, dim=1)
        mean = o.mean(dim=1, keepdim=True)
        var = ((o - mean) ** 2).mean(dim=1, keepdim=True)
        normed = (o - mean) / torch.sqrt(var + eps) * ln_w + ln_b
        u = x_t @ w_g.T
        ys.append((u * sigmoid(u) * normed) @ w_o.T)
    return torch.stack(ys, dim=1), {"kv": torch.stack(kv, dim=1)}
