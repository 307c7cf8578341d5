"""Float64 reference recurrence of the sLSTM layer, a plain loop from the paper's equations.

Per step and channel: z = tanh(z~), i = exp(i~), f = sigmoid(f~), o = sigmoid(o~), every
pre-activation W x + R h_{t-1} + b with R block-diagonal (one block per head, written out
head by head here); the stabilised update m_t = max(log f_t + m_{t-1}, log i_t),
c_t = e^{log f + m_{t-1} - m_t} c_{t-1} + e^{log i - m_t} z_t, n_t likewise with 1 for z,
h_t = o_t c_t / n_t (paper, Section 2.2 and its appendix); a channel whose memory is empty
(n_{t-1} = 0) restarts from m_t = log i_t. Output: per-head layer norm of h_t with the
layer's scale.
"""

from __future__ import annotations

import torch

from tests.reference.formulas import sigmoid
from tests.reference.registry import reference


def random_state(layer, batch: int, gen: torch.Generator) -> dict:
    """A state a real run could reach: n >= 1 (n_t >= 1 holds from the first token on),
    |c| < n (c / n is a weighted mean of tanh values) and |h| < 1 (h = o c / n)."""
    shape = (batch, layer.d_model)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float64)

    n = uniform(1.0, 3.0)
    return {
        "h": uniform(-0.9, 0.9),
        "c": n * uniform(-0.9, 0.9),
        "n": n,
        "m": 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64),
    }


@reference("slstm", random_state=random_state, n_heads=2)
def run(layer, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    batch, seq_len, width = x.shape
    heads, d = layer.n_heads, layer.head_dim
    w, b, r = layer.in_proj.weight, layer.in_proj.bias, layer.recurrent_weight
    h, c, n, m = state["h"], state["c"], state["n"], state["m"]
    ys = []
    for t in range(seq_len):
        pre = x[:, t] @ w.T + b  # (B, 4D): rows i, f, z, o
        rec = []
        for g in range(4):
            blocks = [h[:, k * d : (k + 1) * d] @ r[g, k].T for k in range(heads)]
            rec.append(torch.cat(blocks, dim=1))
        pre = pre + torch.cat(rec, dim=1)
        i_pre, f_pre, z_pre, o_pre = pre.split(width, dim=1)
        log_f = torch.log(sigmoid(f_pre))
        empty = n == 0
        m_new = torch.where(empty, i_pre, torch.maximum(log_f + m, i_pre))
        f_act = torch.where(empty, torch.zeros_like(m), torch.exp(log_f + m - m_new))
        i_act = torch.exp(i_pre - m_new)
        c = f_act * c + i_act * torch.tanh(z_pre)
        n = f_act * n + i_act
        m = m_new
        h = sigmoid(o_pre) * c / n
        normed = []
        for k in range(heads):
            hk = h[:, k * d : (k + 1) * d]
            mean = hk.mean(dim=1, keepdim=True)
            var = ((hk - mean) ** 2).mean(dim=1, keepdim=True)
            normed.append((hk - mean) / torch.sqrt(var + layer.norm_eps))
        ys.append(torch.cat(normed, dim=1) * layer.norm_weight)
    return torch.stack(ys, dim=1), {"h": h, "c": c, "n": n, "m": m}
