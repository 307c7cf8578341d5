"""The Legendre memory of the LMU (Voelker, Kajić, Eliasmith 2019): its (A, B), their
zero-order-hold discretisation, and the linear memory over a sequence in two equal forms.

The memory of order q over a window of theta steps is the linear time-invariant system

    theta m'(t) = A m(t) + B u(t)                      (i, j = 0 .. q-1)
    A_ij = (2i + 1) * (-1 if i < j else (-1)^(i-j+1)),      B_i = (2i + 1) (-1)^i

(:func:`legendre_ab` returns A / theta and B / theta). Its state holds the coefficients of
the shifted Legendre polynomials that best fit the last theta steps of u (a Padé
approximant of the delay by theta). Discretised for steps of length 1 by zero-order hold
(u constant over each step), as keras-lmu does by default:

    Abar = e^A,   Bbar = int_0^1 e^{A s} ds B = A^{-1} (e^A - I) B
    m_t  = Abar m_{t-1} + Bbar u_t

computed in float64 as one matrix exponential of the block matrix [[A, B], [0, 0]]
(:func:`zoh`), whose exponential is [[Abar, Bbar], [0, 1]] (Van Loan 1978).

Every memory channel c (u_t in R^M, M = memory_d) has its own copy of the system; the state
m is (B, M, q). Without feedback from the layer's output into u (the parallel LMU of
Chilkuri & Eliasmith 2021) the memory is a causal convolution of u with the impulse
response H_k = Abar^k Bbar (k = 0, 1, ...), plus the response to the initial state:

    m_t = sum_{s <= t} H_{t-s} u_s  +  Abar^{t+1} m_0

- :func:`memory_loop`: the recurrence, one step at a time (also the step mode).
- :func:`memory_fft`: the convolution by FFT (:func:`statewise.ops.fft_conv.causal_conv`),
  O(B M q T log T); the impulse response and Abar^{t+1} m_0 are built by doubling
  (:func:`power_sequence`: log2 T matrix products, never T repeated ones).

Masks: a masked step leaves the state unchanged. The loop keeps m where the mask is False;
the FFT form compacts each row as :func:`statewise.ops.fft_conv.lti_conv` does (the real
tokens moved, in order, to the end of the row, zero input in front, the initial state's
response shifted to start at the first real token), which is exact for any mask.
"""

from __future__ import annotations

import torch

from statewise.ops.fft_conv import causal_conv, compaction, gather_time
from statewise.ops.precision import float32_recurrence


def legendre_ab(order: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The continuous-time (A / theta, B / theta) of the Legendre memory, float64:
    (order, order) and (order,)."""
    i = torch.arange(order, dtype=torch.int64)
    row, col = i[:, None], i[None, :]
    odd = (row - col + 1) % 2  # (-1)^(i-j+1) = 1 - 2 * ((i - j + 1) mod 2)
    sign = torch.where(row < col, -1, 1 - 2 * odd).to(torch.float64)
    scale = (2 * i + 1).to(torch.float64) / theta
    return scale[:, None] * sign, scale * (1 - 2 * (i % 2)).to(torch.float64)


def zoh(a: torch.Tensor, b: torch.Tensor, dt: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-order hold of x' = a x + b u over a step dt: (e^{a dt}, int_0^dt e^{a s} ds b),
    from the exponential of the block matrix [[a, b], [0, 0]] dt (computed in float64)."""
    q = a.shape[0]
    block = torch.zeros(q + 1, q + 1, dtype=torch.float64, device=a.device)
    block[:q, :q] = a.to(torch.float64) * dt
    block[:q, q] = b.to(torch.float64) * dt
    e = torch.linalg.matrix_exp(block)
    return e[:q, :q].contiguous(), e[:q, q].contiguous()


def legendre_system(order: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(Abar, Bbar) of the Legendre memory for unit steps, float64."""
    return zoh(*legendre_ab(order, theta))


def power_sequence(a: torch.Tensor, v: torch.Tensor, length: int) -> torch.Tensor:
    """a^j v for j = 0 .. length-1: v (..., q) -> (..., length, q), by doubling.

    With the rows a^j v for j < n known, the next n are (a^j v) (a^n)^T; a^n is squared
    each round. The powers of a are formed in a's dtype (float64 for the layers' systems)
    and cast to v's for the products, so gradients flow to v.
    """
    out = v.unsqueeze(-2)
    power = a
    while out.shape[-2] < length:
        n = out.shape[-2]
        more = out[..., : length - n, :] @ power.to(v.dtype).transpose(0, 1)
        out = torch.cat([out, more], dim=-2)
        if out.shape[-2] < length:
            power = power @ power
    return out[..., :length, :]


def memory_step(
    m: torch.Tensor, u: torch.Tensor, a_bar: torch.Tensor, b_bar: torch.Tensor
) -> torch.Tensor:
    """One step m_t = Abar m_{t-1} + Bbar u_t: m (..., M, q), u (..., M) -> (..., M, q)."""
    return m @ a_bar.transpose(0, 1) + u.unsqueeze(-1) * b_bar


@float32_recurrence
def memory_loop(
    u: torch.Tensor,
    a_bar: torch.Tensor,
    b_bar: torch.Tensor,
    m0: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The memory by its recurrence. u (B, T, M), a_bar (q, q), b_bar (q,), m0 (B, M, q),
    mask (B, T) or None -> all m_t (B, T, M, q) and the final state (B, M, q)."""
    a_bar, b_bar = a_bar.to(u.dtype), b_bar.to(u.dtype)
    m, ms = m0, []
    for t, u_t in enumerate(u.unbind(1)):
        new = memory_step(m, u_t, a_bar, b_bar)
        m = new if mask is None else torch.where(mask[:, t, None, None], new, m)
        ms.append(m)
    if not ms:
        return u.new_zeros(*u.shape, a_bar.shape[0]), m0
    return torch.stack(ms, dim=1), m


@float32_recurrence
def memory_fft(
    u: torch.Tensor,
    a_bar: torch.Tensor,
    b_bar: torch.Tensor,
    m0: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The memory as a causal convolution by FFT; same arguments and results as
    :func:`memory_loop`. The impulse response is formed from a_bar, b_bar in float64.

    When m0 is all zeros and needs no gradient (a fresh state) its response is skipped
    (it is exactly zero).
    """
    batch, seq_len, channels = u.shape
    order = a_bar.shape[0]
    if seq_len == 0:
        return u.new_zeros(batch, 0, channels, order), m0
    a64 = a_bar.to(torch.float64)
    kernel = power_sequence(a64, b_bar.to(torch.float64), seq_len).to(u.dtype)  # (T, q)
    u = u.transpose(1, 2)  # (B, M, T)
    if mask is not None:
        order_idx, inverse, n_real = compaction(mask)
        start = seq_len - n_real  # first real position in the compacted row
        real = torch.arange(seq_len, device=u.device) >= start.unsqueeze(1)
        u = gather_time(u, order_idx) * real.unsqueeze(1).to(u.dtype)
    m = causal_conv(u.unsqueeze(2), kernel.transpose(0, 1))  # (B, M, q, T)
    if m0.requires_grad or bool(m0.any()):
        if mask is None:  # step t sees Abar^{t+1} m0
            response = power_sequence(a64, m0, seq_len + 1)[:, :, 1:]  # (B, M, T, q)
        else:  # the state is m0 until the first real token: shift the response there
            response = power_sequence(a64, m0, seq_len + 1)
            steps = torch.arange(1, seq_len + 1, device=u.device) - start.unsqueeze(1)
            index = steps.clamp(min=0)[:, None, :, None].expand(-1, channels, -1, order)
            response = response.gather(2, index)
        m = m + response.transpose(2, 3)
    final = m[..., -1]  # the compacted row ends with its last real token
    if mask is not None:
        m = gather_time(m.reshape(batch, channels * order, seq_len), inverse)
        m = m.view(batch, channels, order, seq_len)
    return m.permute(0, 3, 1, 2), final
