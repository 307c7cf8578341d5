"""Float64 reference recurrence of DeltaNet, a plain loop from the equations.

Per token: (q, k, v) = silu(conv over the window of the last K projections W x) (or
silu(W x) without the conv); per head h: q = q_h / sqrt(|q_h|^2 + 1e-6) / sqrt(d_k),
k = k_h / sqrt(|k_h|^2 + 1e-6), beta = sigmoid(w_beta,h . x) (times 2 with negative
eigenvalues), the transition matrix built explicitly:
S_h = alpha_h (I - beta k k^T) S_h + beta k v^T (alpha = 1 here; Gated DeltaNet's
reference passes its decay), o_h = S_h^T q; then u_h = o_h / sqrt(mean(o_h^2) + eps) * w
(times silu(gate_h) with the output gate); y = W_o concat(u_h).
"""

from __future__ import annotations

import torch

from tests.reference.formulas import activation, sigmoid
from tests.reference.registry import reference


def run_delta_layer(layer, x: torch.Tensor, state: dict, decay=None) -> tuple[torch.Tensor, dict]:
    """The loop shared with Gated DeltaNet: ``decay(x_t)`` gives alpha (B, H), None = 1."""
    heads, dk, dv = layer.n_heads, layer.head_k, layer.head_v
    kd = layer.key_dim
    eye = torch.eye(dk, dtype=x.dtype)
    w_qkv = torch.cat([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight])
    if layer.use_short_conv:
        w_conv, b_conv = layer.conv1d.weight[:, 0], layer.conv1d.bias
        window = [state["conv"][:, j] for j in range(layer.d_conv - 1)]
    S = [state["kv"][:, h].clone() for h in range(heads)]  # each (B, d_k, d_v)
    ys = []
    for t in range(x.shape[1]):
        x_t = x[:, t]
        pre = x_t @ w_qkv.T
        if layer.use_short_conv:
            window.append(pre)
            pre = sum(w_conv[:, j] * window[j] for j in range(layer.d_conv))
            if b_conv is not None:
                pre = pre + b_conv
            window.pop(0)
        act = activation("silu", pre)
        beta = sigmoid(x_t @ layer.b_proj.weight.T)  # (B, H)
        if layer.negative_eigenvalues:
            beta = 2.0 * beta
        alpha = None if decay is None else decay(x_t)
        gate = x_t @ layer.g_proj.weight.T if layer.use_gate else None
        outs = []
        for h in range(heads):
            q = act[:, h * dk : (h + 1) * dk]
            k = act[:, kd + h * dk : kd + (h + 1) * dk]
            v = act[:, 2 * kd + h * dv : 2 * kd + (h + 1) * dv]
            q = q / torch.sqrt((q**2).sum(1, keepdim=True) + 1e-6) / dk**0.5
            k = k / torch.sqrt((k**2).sum(1, keepdim=True) + 1e-6)
            b = beta[:, h, None, None]
            transition = eye - b * k[:, :, None] * k[:, None, :]  # (B, d_k, d_k)
            if alpha is not None:
                transition = alpha[:, h, None, None] * transition
            S[h] = transition @ S[h] + b * k[:, :, None] * v[:, None, :]
            o = (S[h] * q[:, :, None]).sum(1)  # S^T q, (B, d_v)
            rms = torch.sqrt((o**2).mean(1, keepdim=True) + layer.o_norm.eps)
            u = o / rms * layer.o_norm.weight
            if gate is not None:
                u = u * activation("silu", gate[:, h * dv : (h + 1) * dv])
            outs.append(u)
        ys.append(torch.cat(outs, dim=1) @ layer.o_proj.weight.T)
    final = {}
    if layer.use_short_conv:
        final["conv"] = torch.stack(window, dim=1) if layer.d_conv > 1 else state["conv"].clone()
    final["kv"] = torch.stack(S, dim=1)
    return torch.stack(ys, dim=1), final


@reference("deltanet", n_heads=2, chunk_size=4)
@reference(
    "deltanet",
    variant="options",
    n_heads=2,
    expand_v=1.5,
    d_conv=2,
    conv_bias=True,
    use_gate=True,
    negative_eigenvalues=True,
    chunk_size=5,
)
def run(layer, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    return run_delta_layer(layer, x, state)
