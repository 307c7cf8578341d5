"""Float64 reference recurrence of the mLSTM layer, a plain loop from the paper's equations.

The cell runs WITHOUT stabilisation, in the true scale (the harness's numbers are small):

    C_t = f_t C_{t-1} + i_t k_t^T v_t,   n_t = f_t n_{t-1} + i_t k_t
    h~_t = q_t C_t / max(|q_t n_t|, 1)

with i_t = exp(i~_t), f_t = sigmoid(f~_t) (or 2 sigmoid(f~_t) - 1 with negative eigenvalues),
k_t = W_k x_t / sqrt(d_k). The layer's state is the stabilised (C, n, m) with true state
(e^m C, e^m n); the stabiliser m_t = max(log|f_t| + m_{t-1}, i~_t) is tracked beside the
loop only to report the final state in that form. Any finite (C, n, m) is a valid state
(h depends only on the true state), so the harness's normal draw is used as it is.
"""

from __future__ import annotations

import math

import torch

from tests.reference.formulas import sigmoid
from tests.reference.registry import reference


def _head_layer_norm(o: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalise each head's outputs o (B, H, d_v) by their mean and variance; scale by weight."""
    mean = o.mean(dim=-1, keepdim=True)
    var = ((o - mean) ** 2).mean(dim=-1, keepdim=True)
    return ((o - mean) / torch.sqrt(var + eps)).flatten(1) * weight


@reference("mlstm", n_heads=2, chunk_size=4)
@reference("mlstm", variant="negative", n_heads=2, chunk_size=4, negative_eigenvalues=True)
@reference("mlstm", variant="capped", n_heads=2, chunk_size=3, gate_soft_cap=2.0)
def run(layer, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    batch, seq_len, _ = x.shape
    heads, d_k, d_v = layer.n_heads, layer.d_k, layer.d_v
    m = state["m"]
    c = state["C"] * torch.exp(m)[..., None, None]  # true scale
    n = state["n"] * torch.exp(m)[..., None]
    ys = []
    for t in range(seq_len):
        x_t = x[:, t]
        q = (x_t @ layer.q_proj.weight.T).view(batch, heads, d_k)
        k = (x_t @ layer.k_proj.weight.T).view(batch, heads, d_k) / math.sqrt(d_k)
        v = (x_t @ layer.v_proj.weight.T).view(batch, heads, d_v)
        i_pre = x_t @ layer.i_proj.weight.T + layer.i_proj.bias  # (B, H)
        f_pre = x_t @ layer.f_proj.weight.T + layer.f_proj.bias
        if layer.gate_soft_cap is not None:
            cap = layer.gate_soft_cap
            i_pre, f_pre = cap * torch.tanh(i_pre / cap), cap * torch.tanh(f_pre / cap)
        f = sigmoid(f_pre)
        if layer.negative_eigenvalues:
            f = 2.0 * f - 1.0
        i = torch.exp(i_pre)
        c = f[..., None, None] * c + i[..., None, None] * k[..., :, None] * v[..., None, :]
        n = f[..., None] * n + i[..., None] * k
        m = torch.maximum(torch.log(f.abs()) + m, i_pre)
        num = (q[..., :, None] * c).sum(dim=-2)  # (B, H, d_v)
        den = (q * n).sum(dim=-1).abs()
        h = num / torch.maximum(den, torch.ones_like(den))[..., None]
        o = sigmoid(x_t @ layer.o_proj.weight.T)
        ys.append(
            (o * _head_layer_norm(h, layer.norm_weight, layer.norm_eps)) @ layer.out_proj.weight.T
        )
    final = {"C": c * torch.exp(-m)[..., None, None], "n": n * torch.exp(-m)[..., None], "m": m}
    return torch.stack(ys, dim=1), final
