"""Float64 reference recurrence of HGRN2, a plain loop over time from the paper's equations.

Per token and head: f = gamma + (1 - gamma) sigmoid(W_f x) per key channel (gamma =
layer_index / n_layers), k = 1 - f, q = silu(W_q x), v = W_v x; S = diag(f) S + k v^T,
o = S^T q; LayerNorm over the concatenated heads from the mean and variance formulas;
y = W_o LN(o).
"""

from __future__ import annotations

import torch

from tests.reference.formulas import activation, sigmoid
from tests.reference.registry import reference


# layer 1 of 3: a lower bound gamma = 1/3 (the logaddexp path); "first": layer 0, no bound
@reference("hgrn2", n_heads=2, chunk_size=4, layer_index=1, n_layers=3)
@reference("hgrn2", variant="first", expand_ratio=4, chunk_size=8, layer_index=0, n_layers=2)
def run(layer, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    batch, seq_len, width = x.shape
    heads = layer.n_heads
    d = width // heads
    gamma = layer.layer_index / layer.n_layers
    w_q, w_f, w_i = layer.q_proj.weight, layer.f_proj.weight, layer.i_proj.weight
    ln_w, ln_b, eps = layer.norm.weight, layer.norm.bias, layer.norm.eps
    kv = [state["kv"][:, h] for h in range(heads)]  # each (B, d, d): rows key, cols value
    ys = []
    for t in range(seq_len):
        x_t = x[:, t]
        f_all = gamma + (1.0 - gamma) * sigmoid(x_t @ w_f.T)
        q_all, v_all = activation("silu", x_t @ w_q.T), x_t @ w_i.T
        outs = []
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            f, q, v = f_all[:, cols], q_all[:, cols], v_all[:, cols]
            kv[h] = f[:, :, None] * kv[h] + (1.0 - f)[:, :, None] * v[:, None, :]
            outs.append((kv[h] * q[:, :, None]).sum(dim=1))  # (B, d): S^T q
        o = torch.cat(outs, dim=1)
        mean = o.mean(dim=1, keepdim=True)
        var = ((o - mean) ** 2).mean(dim=1, keepdim=True)
        normed = (o - mean) / torch.sqrt(var + eps) * ln_w + ln_b
        ys.append(normed @ layer.o_proj.weight.T)
    return torch.stack(ys, dim=1), {"kv": torch.stack(kv, dim=1)}
