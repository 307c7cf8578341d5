"""Prefix softmax attention with a fixed query (online softmax), in two equal forms.

For scores s_t (B, T, H) and values v_t (B, T, H, d), the output at every step is the
softmax-weighted mean of the values so far, o_t = sum_{i<=t} e^{s_i} v_i / sum_{i<=t} e^{s_i}.
It is carried in a stabilised state (m, u, w) per head:

    m_t = max(m_{t-1}, s_t)                                running max of the scores
    u_t = u_{t-1} e^{m_{t-1} - m_t} + e^{s_t - m_t}        sum of e^{s_i - m_t}
    w_t = w_{t-1} e^{m_{t-1} - m_t} + e^{s_t - m_t} v_t    sum of e^{s_i - m_t} v_i
    o_t = w_t / u_t

The empty prefix is (m, u, w) = (-inf, 0, 0); a step with s_t = -inf is the identity, which
is how masked (padding) steps are skipped. Every exponent is <= 0, so nothing overflows;
where m is still -inf a 0 stands in for it in the exponents (no -inf - -inf = NaN).

- :func:`softmax_scan_loop`: the running max m by a cumulative max over time (the only
  nonlinear part), after which (u, w) is the diagonal linear recurrence
  h_t = a_t h_{t-1} + b_t with a_t = e^{m_{t-1} - m_t}, b_t = e^{s_t - m_t} (1, v_t), run by
  the loop of :func:`statewise.ops.scan.linear_recurrence` (hand-written backward).
- :func:`softmax_scan_parallel`: a Hillis-Steele doubling scan of the associative operator
  (Feng et al. 2024, "Attention as an RNN")

      (m_A, u_A, w_A) . (m_B, u_B, w_B) = (m, u_A e^{m_A - m} + u_B e^{m_B - m},
                                              w_A e^{m_A - m} + w_B e^{m_B - m}),  m = max(m_A, m_B)

  over the elements (s_i, 1, v_i): ceil(log2 T) elementwise passes over the sequence.

Both return (m, u, w) at every step; o_t = :func:`softmax_readout` (m, u, w).
"""

from __future__ import annotations

import torch

from statewise.ops.precision import float32_recurrence
from statewise.ops.scan import linear_recurrence

MODES = ("loop", "scan")

SoftmaxState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _finite_or_zero(m: torch.Tensor) -> torch.Tensor:
    """m where it is finite, else 0: the reference point of exponents while m is -inf."""
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


@float32_recurrence
def softmax_combine(first: SoftmaxState, second: SoftmaxState) -> SoftmaxState:
    """The associative operator: the state of prefix ``first`` followed by segment ``second``.

    Each is (m, u, w) with m, u of shape (...,) and w of shape (..., d). -inf in m (an empty
    prefix or segment) is handled: the empty element is the identity on either side.
    """
    m_a, u_a, w_a = first
    m_b, u_b, w_b = second
    m = torch.maximum(m_a, m_b)
    ref = _finite_or_zero(m)
    scale_a, scale_b = torch.exp(m_a - ref), torch.exp(m_b - ref)
    u = u_a * scale_a + u_b * scale_b
    w = w_a * scale_a.unsqueeze(-1) + w_b * scale_b.unsqueeze(-1)
    return m, u, w


@float32_recurrence
def softmax_readout(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """o = w / u, and 0 for an empty prefix (u = 0, w = 0) instead of 0/0."""
    empty = u == 0
    return w / torch.where(empty, torch.ones_like(u), u).unsqueeze(-1)


def _check(s: torch.Tensor, v: torch.Tensor, state: SoftmaxState) -> None:
    if s.dim() != 3 or v.dim() != 4 or v.shape[:3] != s.shape:
        raise ValueError(
            f"s must be (B, T, H) and v (B, T, H, d), got {tuple(s.shape)} and {tuple(v.shape)}"
        )
    m0, u0, w0 = state
    if m0.shape != s.shape[:1] + s.shape[2:] or u0.shape != m0.shape:
        raise ValueError(f"m0 and u0 must be (B, H), got {tuple(m0.shape)}, {tuple(u0.shape)}")
    if w0.shape != v.shape[:1] + v.shape[2:]:
        raise ValueError(f"w0 must be (B, H, d), got {tuple(w0.shape)}")


def softmax_scan_loop(s: torch.Tensor, v: torch.Tensor, state: SoftmaxState) -> SoftmaxState:
    """(m, u, w) at every step by a cumulative max and a diagonal linear recurrence.

    s: (B, T, H) scores (-inf = skip the step); v: (B, T, H, d); state (m0, u0, w0) of
    shapes (B, H), (B, H), (B, H, d). Returns m (B, T, H), u (B, T, H), w (B, T, H, d).
    """
    _check(s, v, state)
    m0, u0, w0 = state
    m = torch.cummax(torch.cat([m0.unsqueeze(1), s], dim=1), dim=1).values  # (B, T+1, H)
    ref = _finite_or_zero(m)
    a = torch.exp(m[:, :-1] - ref[:, 1:])  # e^{m_{t-1} - m_t}; 0 while m_{t-1} is -inf
    weight = torch.exp(s - ref[:, 1:])  # e^{s_t - m_t}; 0 at skipped steps
    b = torch.cat([weight.unsqueeze(-1), weight.unsqueeze(-1) * v], dim=-1)  # (B, T, H, 1+d)
    h = linear_recurrence(a.unsqueeze(-1), b, torch.cat([u0.unsqueeze(-1), w0], dim=-1))
    return m[:, 1:], h[..., 0], h[..., 1:]


def softmax_scan_parallel(s: torch.Tensor, v: torch.Tensor, state: SoftmaxState) -> SoftmaxState:
    """(m, u, w) at every step by a Hillis-Steele doubling scan of :func:`softmax_combine`.

    Same arguments and result as :func:`softmax_scan_loop`. The initial state is folded
    into the first element; then for offsets d = 1, 2, 4, ... < T every position t >= d
    combines the element d steps back with its own, so after ceil(log2 T) passes each
    position holds its whole prefix. O(T log T) elementwise work, no GEMM.
    """
    _check(s, v, state)
    seq_len = s.shape[1]
    m, u, w = s, torch.ones_like(s), v
    first = softmax_combine(state, (m[:, 0], u[:, 0], w[:, 0]))
    m, u, w = (torch.cat([f.unsqueeze(1), x[:, 1:]], dim=1) for f, x in zip(first, (m, u, w)))
    d = 1
    while d < seq_len:
        back = (m[:, :-d], u[:, :-d], w[:, :-d])
        m_new, u_new, w_new = softmax_combine(back, (m[:, d:], u[:, d:], w[:, d:]))
        m = torch.cat([m[:, :d], m_new], dim=1)
        u = torch.cat([u[:, :d], u_new], dim=1)
        w = torch.cat([w[:, :d], w_new], dim=1)
        d *= 2
    return m, u, w


@float32_recurrence
def softmax_scan(
    s: torch.Tensor, v: torch.Tensor, state: SoftmaxState, mode: str = "loop"
) -> SoftmaxState:
    """(m, u, w) at every step, in ``mode`` "loop" or "scan" (see the module docstring)."""
    if mode == "loop":
        return softmax_scan_loop(s, v, state)
    if mode == "scan":
        return softmax_scan_parallel(s, v, state)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
