"""Float64 reference recurrence of the Mamba mixer, a plain loop from the paper's equations.

Per token: (u, z) = W_in x; the conv over the window of the last K inputs u; c = act(conv);
(r, B, C) = W_x c; dt = softplus(W_dt r + b_dt); A = -exp(A_log);
h[e, n] = abar[e, n] h[e, n] + dt[e] B[n] c[e] with abar = exp(dt A) (or 2 exp(dt A) - 1
with negative eigenvalues); y = sum_n C[n] h[e, n] + D c; out = W_out (y * silu(z)).
"""

from __future__ import annotations

import torch

from tests.reference.formulas import activation, linear, sigmoid
from tests.reference.registry import reference


# dt_min/dt_max large enough that exp(dt A) spans (0, 1), so 2 exp(dt A) - 1 takes both signs
@reference("mamba", d_state=4, dt_rank=2, scan_chunk_size=4, dt_min=0.05, dt_max=1.0)
@reference(
    "mamba",
    variant="negative",
    d_state=4,
    negative_eigenvalues=True,
    scan_chunk_size=5,
    dt_min=0.1,
    dt_max=1.0,
)
@reference(
    "mamba",
    variant="options",
    d_state=3,
    d_conv=2,
    expand=1.5,
    bias=True,
    conv_bias=False,
    activation="gelu",
)
def run(layer, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    e, n, r, k = layer.d_inner, layer.d_state, layer.dt_rank, layer.d_conv
    w_conv = layer.conv1d.weight[:, 0]  # (E, K)
    b_conv = layer.conv1d.bias
    A = -torch.exp(layer.A_log)  # (E, N)
    window = [state["conv"][:, j] for j in range(k - 1)]  # oldest first, each (B, E)
    h = state["ssm"].clone()  # (B, E, N)
    ys = []
    for t in range(x.shape[1]):
        xz = linear(layer.in_proj, x[:, t])
        u, z = xz[:, :e], xz[:, e:]
        window.append(u)
        conv = sum(w_conv[:, j] * window[j] for j in range(k))
        if b_conv is not None:
            conv = conv + b_conv
        window.pop(0)
        c = activation(layer.activation, conv)
        proj = c @ layer.x_proj.weight.T
        r_t, b_t, c_t = proj[:, :r], proj[:, r : r + n], proj[:, r + n :]
        dt = torch.log1p(torch.exp(linear(layer.dt_proj, r_t)))  # softplus, (B, E)
        new_h = torch.empty_like(h)
        for i in range(n):
            abar = torch.exp(dt * A[:, i])
            if layer.negative_eigenvalues:
                abar = 2.0 * abar - 1.0
            new_h[:, :, i] = abar * h[:, :, i] + dt * b_t[:, i : i + 1] * c
        h = new_h
        y = (h * c_t[:, None, :]).sum(dim=2) + layer.D * c
        ys.append(linear(layer.out_proj, y * z * sigmoid(z)))
    conv_state = torch.stack(window, dim=1) if k > 1 else state["conv"].clone()
    return torch.stack(ys, dim=1), {"conv": conv_state, "ssm": h}
