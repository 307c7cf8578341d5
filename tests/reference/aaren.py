"""Float64 reference recurrence of Aaren (attention as an RNN), from the paper's RNN cell.

Per step and head: s = q . k / sqrt(d); m' = max(m, s); u' = u e^{m - m'} + e^{s - m'};
w' = w e^{m - m'} + e^{s - m'} v; o = w' / u'; y = W_O concat(o). The state is
{"m", "u", "w"}; the fresh state (m = -inf, u = 0, w = 0) is the empty prefix.
"""

from __future__ import annotations

import math

import torch

from tests.reference.registry import reference


def random_state(layer, batch: int, generator: torch.Generator) -> dict:
    """A finite, valid state: any m, a positive u (a sum of exponentials), any w."""
    heads, d = layer.n_heads, layer.head_dim
    kw = dict(generator=generator, dtype=torch.float64)
    return {
        "m": torch.randn(batch, heads, **kw),
        "u": 0.5 + torch.rand(batch, heads, **kw),
        "w": torch.randn(batch, heads, d, **kw),
    }


@reference("aaren", random_state=random_state, n_heads=2)
def run(layer, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    batch, seq_len, width = x.shape
    heads, d = layer.n_heads, layer.head_dim
    w_k, w_v, w_o = layer.k_proj.weight, layer.v_proj.weight, layer.out_proj.weight
    m, u, w = state["m"], state["u"], state["w"]  # (B, H), (B, H), (B, H, d)
    ys = []
    for t in range(seq_len):
        k = (x[:, t] @ w_k.T).view(batch, heads, d)
        v = (x[:, t] @ w_v.T).view(batch, heads, d)
        s = (k * layer.query).sum(dim=-1) / math.sqrt(d)
        m_new = torch.maximum(m, s)
        old, new = torch.exp(m - m_new), torch.exp(s - m_new)
        u = u * old + new
        w = w * old[..., None] + new[..., None] * v
        m = m_new
        o = w / u[..., None]
        ys.append(o.reshape(batch, width) @ w_o.T)
    return torch.stack(ys, dim=1), {"m": m, "u": u, "w": w}
