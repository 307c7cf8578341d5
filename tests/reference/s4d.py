"""Float64 reference recurrence of S4D, a plain loop written from the paper's equations.

Per channel h and complex mode n: A = -exp(log_A_real) + i A_imag, dt = exp(log_dt),
ZOH: Abar = exp(dt A), Bbar = (Abar - 1) / A * B; x_t = Abar x_{t-1} + Bbar u_t,
y_t = 2 Re(sum_n C_n x_t,n) + D u_t; out = GLU(W GELU(y) + b) (or W GELU(y) + b).
The state is (B, H, N/2, 2): the complex modes as (real, imaginary) pairs.
"""

from __future__ import annotations

import math

import torch

from tests.reference.formulas import sigmoid
from tests.reference.registry import reference


def _gelu(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * z * (1.0 + torch.erf(z / math.sqrt(2.0)))


@reference("s4d", d_state=4)
@reference("s4d", variant="inv-linear", d_state=6, init="inv", output="linear")
def run(layer, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch, seq_len, width = x.shape
    a = torch.complex(-torch.exp(layer.log_A_real), layer.A_imag)  # (H, N/2)
    b = torch.complex(layer.B[..., 0], layer.B[..., 1])
    c = torch.complex(layer.C[..., 0], layer.C[..., 1])
    dt = torch.exp(layer.log_dt)[:, None]
    a_bar = torch.exp(dt * a)
    b_bar = (a_bar - 1.0) / a * b
    w, bias = layer.out_proj.weight, layer.out_proj.bias
    h = torch.complex(state[..., 0], state[..., 1])  # (B, H, N/2)
    ys = []
    for t in range(seq_len):
        u = x[:, t]  # (B, H)
        h = a_bar * h + b_bar * u[:, :, None]
        y = 2.0 * (c * h).sum(dim=-1).real + layer.D * u
        z = _gelu(y) @ w.T + bias
        if layer.output == "glu":
            z = z[:, :width] * sigmoid(z[:, width:])
        ys.append(z)
    return torch.stack(ys, dim=1), torch.stack([h.real, h.imag], dim=-1)
