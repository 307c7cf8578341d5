"""Float64 reference recurrences of the two LMU layers, plain loops from the papers' equations.

Memory (Voelker et al. 2019, equations 1-4): theta m' = A m + B u with
A_ij = (2i+1) (-1 if i < j else (-1)^(i-j+1)), B_i = (2i+1) (-1)^i, written out entry by
entry below; discretised by zero-order hold for unit steps in its closed form
Abar = e^{A/theta}, Bbar = (A/theta)^{-1} (Abar - I) B/theta (the layer takes the matrix
exponential of a block matrix instead). Per memory channel c: m_t[c] = Abar m_{t-1}[c] +
Bbar u_t[c].

lmu (equations 6-7, memory of M channels): u_t = e_x x_t + e_h h_{t-1} + e_m m_{t-1},
h_t = tanh(W_x x_t + W_h h_{t-1} + W_m m_t), y_t = h_t (or W_o h_t). State {"m", "h"}.

parallel_lmu (Chilkuri & Eliasmith 2021): u_t = W_u x_t + b_u, the same memory,
y_t = f(W_m m_t + b_o + W_x x_t). State m (B, M, q).
"""

from __future__ import annotations

import torch

from tests.reference.formulas import activation, linear
from tests.reference.registry import reference


def legendre_memory(order: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(Abar, Bbar) by zero-order hold, from the paper's formulas entry by entry."""
    a = torch.zeros(order, order, dtype=torch.float64)
    b = torch.zeros(order, dtype=torch.float64)
    for i in range(order):
        b[i] = (2 * i + 1) * (-1) ** i / theta
        for j in range(order):
            a[i, j] = (2 * i + 1) * (-1 if i < j else (-1) ** (i - j + 1)) / theta
    a_bar = torch.linalg.matrix_exp(a)
    b_bar = torch.linalg.solve(a, (a_bar - torch.eye(order, dtype=torch.float64)) @ b)
    return a_bar, b_bar


def output_activation(name: str, v: torch.Tensor) -> torch.Tensor:
    """parallel_lmu's f, written out."""
    if name == "relu":
        return torch.where(v > 0, v, torch.zeros_like(v))
    if name == "tanh":
        return torch.tanh(v)
    if name == "identity":
        return v
    return activation(name, v)


@reference("lmu", order=4, theta=5.0, memory_d=2)
@reference("lmu", variant="hidden", order=3, theta=3.0, memory_d=3, hidden_size=5)
def run_lmu(layer, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    a_bar, b_bar = legendre_memory(layer.order, layer.theta)
    batch = x.shape[0]
    m, h = state["m"], state["h"]  # (B, M, q), (B, H)
    ys = []
    for t in range(x.shape[1]):
        m_flat = m.reshape(batch, -1)
        u = x[:, t] @ layer.e_x.T + h @ layer.e_h.T + m_flat @ layer.e_m.T  # (B, M)
        m = torch.einsum("ij,bcj->bci", a_bar, m) + u[:, :, None] * b_bar
        h = torch.tanh(x[:, t] @ layer.W_x.T + h @ layer.W_h.T + m.reshape(batch, -1) @ layer.W_m.T)
        ys.append(h if layer.out_proj is None else linear(layer.out_proj, h))
    return torch.stack(ys, dim=1), {"m": m, "h": h}


@reference("parallel_lmu", order=4, theta=5.0, memory_d=2)
def run_parallel_lmu(layer, x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a_bar, b_bar = legendre_memory(layer.order, layer.theta)
    batch = x.shape[0]
    ys = []
    for t in range(x.shape[1]):
        u = linear(layer.u_proj, x[:, t])  # (B, M)
        m = torch.einsum("ij,bcj->bci", a_bar, m) + u[:, :, None] * b_bar
        pre = linear(layer.m_proj, m.reshape(batch, -1)) + linear(layer.x_proj, x[:, t])
        ys.append(output_activation(layer.activation, pre))
    return torch.stack(ys, dim=1), m
