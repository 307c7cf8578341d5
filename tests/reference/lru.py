"""Float64 reference recurrence of the LRU, a plain loop in complex arithmetic from the paper."""

from __future__ import annotations

import math

import torch

from tests.reference.registry import reference


@reference("lru", d_hidden=6, r_min=0.4, r_max=0.95)
@reference("lru", variant="phase", d_hidden=5, max_phase=math.pi / 10)
@reference("lru", variant="negative", d_hidden=6, r_min=0.4, r_max=0.95,
           negative_eigenvalues=True)  # fmt: skip
def run(layer, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """lambda = exp(-exp(nu_log) + i exp(theta_log)), gamma = exp(gamma_log);
    h_t = lambda h_{t-1} + gamma (B x_t), y_t = Re(C h_t) + D x_t, with B = B_re + i B_im and
    C = C_re + i C_im. The state is h as (real, imaginary) pairs, shape (batch, N, 2).

    With negative_eigenvalues the modulus r = exp(-exp(nu_log)) becomes 2 r - 1.
    """
    r = torch.exp(-torch.exp(layer.nu_log))
    if layer.negative_eigenvalues:
        r = 2.0 * r - 1.0
    lam = r * torch.exp(1j * torch.exp(layer.theta_log))
    gamma = torch.exp(layer.gamma_log)
    b_mat = torch.complex(layer.B_re, layer.B_im)
    c_mat = torch.complex(layer.C_re, layer.C_im)
    h = torch.complex(state[..., 0], state[..., 1])
    ys = []
    for t in range(x.shape[1]):
        x_t = x[:, t]
        h = lam * h + gamma * (x_t.to(b_mat.dtype) @ b_mat.T)
        ys.append((h @ c_mat.T).real + layer.D * x_t)
    return torch.stack(ys, dim=1), torch.stack((h.real, h.imag), dim=-1)
