"""Float64 reference recurrence of the Mamba-2 (SSD) mixer, a plain loop from the equations.

Per token: (z, xBC, dt) = W_in x; the conv over the window of the last K inputs xBC;
(x, B, C) = act(conv); dt = clamp(softplus(dt + dt_bias)); per head h with group g(h):
a = exp(dt_h A_h) (or 2 exp(dt_h A_h) - 1 with negative eigenvalues),
S_h = a S_h + B_g^T (dt_h x_h), y_h = C_g S_h + D_h x_h; then per norm group
u = y * silu(z), u / sqrt(mean(u^2) + eps) * w; out = W_out u.
"""

from __future__ import annotations

import torch

from tests.reference.formulas import activation, linear, sigmoid
from tests.reference.registry import reference


@reference("mamba2", d_state=4, n_heads=4, n_groups=2, chunk_size=4)
# dt large enough (via dt_limit's floor) that 2 exp(dt A) - 1 takes both signs
@reference(
    "mamba2",
    variant="negative",
    d_state=4,
    head_dim=8,
    chunk_size=5,
    negative_eigenvalues=True,
    dt_limit=(0.1, 2.0),
    A_init_range=(0.5, 4.0),
)
@reference(
    "mamba2",
    variant="options",
    d_state=3,
    d_conv=2,
    expand=3,
    n_heads=6,
    n_groups=3,
    bias=True,
    conv_bias=False,
    activation="gelu",
    dt_limit=(0.01, 0.05),
    norm_eps=1e-3,
    chunk_size=3,
)
def run(layer, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    e, n, k = layer.d_inner, layer.d_state, layer.d_conv
    heads, p, groups = layer.n_heads, layer.head_dim, layer.n_groups
    gn = groups * n
    w_conv, b_conv = layer.conv1d.weight[:, 0], layer.conv1d.bias
    A = -torch.exp(layer.A_log)
    lo, hi = layer.dt_limit
    window = [state["conv"][:, j] for j in range(k - 1)]
    S = [state["ssm"][:, h].clone() for h in range(heads)]  # each (B, N, P)
    ys = []
    for t in range(x.shape[1]):
        proj = linear(layer.in_proj, x[:, t])
        z, xbc, dt_raw = proj[:, :e], proj[:, e : e + layer.conv_dim], proj[:, e + layer.conv_dim :]
        window.append(xbc)
        conv = sum(w_conv[:, j] * window[j] for j in range(k))
        if b_conv is not None:
            conv = conv + b_conv
        window.pop(0)
        act = activation(layer.activation, conv)
        xs, b, c = act[:, :e], act[:, e : e + gn], act[:, e + gn :]
        dt = torch.log1p(torch.exp(dt_raw + layer.dt_bias)).clamp(lo, hi)  # (B, H)
        y = torch.empty_like(xs)
        for h in range(heads):
            g = h // (heads // groups)
            b_h, c_h = b[:, g * n : (g + 1) * n], c[:, g * n : (g + 1) * n]  # (B, N)
            x_h = xs[:, h * p : (h + 1) * p]  # (B, P)
            a = torch.exp(dt[:, h] * A[h])
            if layer.negative_eigenvalues:
                a = 2.0 * a - 1.0
            S[h] = a[:, None, None] * S[h] + b_h[:, :, None] * (dt[:, h, None] * x_h)[:, None, :]
            y[:, h * p : (h + 1) * p] = (c_h[:, :, None] * S[h]).sum(dim=1) + layer.D[h] * x_h
        u = y * z * sigmoid(z)
        size = e // groups
        normed = []
        for g in range(groups):
            part = u[:, g * size : (g + 1) * size]
            rms = torch.sqrt((part**2).mean(dim=1, keepdim=True) + layer.norm.eps)
            normed.append(part / rms)
        ys.append(linear(layer.out_proj, torch.cat(normed, dim=1) * layer.norm.weight))
    conv_state = torch.stack(window, dim=1) if k > 1 else state["conv"].clone()
    return torch.stack(ys, dim=1), {"conv": conv_state, "ssm": torch.stack(S, dim=1)}
