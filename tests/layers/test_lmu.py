"""The Legendre memory (statewise.ops.legendre) and the two LMU layers, beyond the contract
harness: (A, B) against the paper's formulas written out by hand, the zero-order hold
against its closed form and an Euler integration, the memory as a delay line (Legendre
decoding), the impulse response against the recurrence, the FFT form against the loop
(masks, initial states, gradients, float32 over long sequences), and the layers' options.
"""

from __future__ import annotations

import math

import pytest
import torch

import statewise.layers as L
import statewise.layers.lmu as lmu_module
from statewise.errors import ArgumentError
from statewise.ops.legendre import (
    legendre_ab,
    legendre_system,
    memory_fft,
    memory_loop,
    memory_step,
    power_sequence,
    zoh,
)
from tests.reference.lmu import run_parallel_lmu

F64 = dict(rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------- (A, B)


def test_a_and_b_are_the_papers_for_small_orders():
    """A_ij = (2i+1)(-1 if i < j else (-1)^(i-j+1)), B_i = (2i+1)(-1)^i, divided by theta:
    written out by hand for q = 1, 2, 3."""
    by_hand = {
        1: ([[-1.0]], [1.0]),
        2: ([[-1.0, -1.0], [3.0, -3.0]], [1.0, -3.0]),
        3: ([[-1.0, -1.0, -1.0], [3.0, -3.0, -3.0], [-5.0, 5.0, -5.0]], [1.0, -3.0, 5.0]),
    }
    for q, (a, b) in by_hand.items():
        for theta in (1.0, 2.5):
            a_got, b_got = legendre_ab(q, theta)
            expected_a = torch.tensor(a, dtype=torch.float64) / theta
            torch.testing.assert_close(a_got, expected_a, rtol=0, atol=0)
            torch.testing.assert_close(b_got, torch.tensor(b, dtype=torch.float64) / theta)
    a4, b4 = legendre_ab(4, 1.0)  # q = 4: the last row (i = 3) and column (j = 3)
    torch.testing.assert_close(a4[3], torch.tensor([7.0, -7.0, 7.0, -7.0], dtype=torch.float64))
    torch.testing.assert_close(a4[:3, 3], torch.tensor([-1.0, -3.0, -5.0], dtype=torch.float64))
    assert b4[3] == -7.0


def test_a_sends_the_first_legendre_coefficient_to_minus_b():
    """A e_0 = -B: a constant input's window is the constant Legendre polynomial, so the
    steady state of theta m' = A m + B u for u = 1 is m = e_0 (any order and theta)."""
    for q, theta in ((1, 1.0), (5, 3.0), (32, 256.0)):
        a, b = legendre_ab(q, theta)
        torch.testing.assert_close(a[:, 0], -b, rtol=0, atol=0)


# ----------------------------------------------------------------- ZOH


@pytest.mark.parametrize("q,theta", [(1, 2.0), (4, 5.0), (12, 60.0), (32, 256.0)])
def test_zoh_equals_its_closed_form(q, theta):
    """Abar = e^A, Bbar = A^{-1} (e^A - I) B (A is invertible: its eigenvalues are the poles
    of the delay's Pade approximant, all with negative real part)."""
    a, b = legendre_ab(q, theta)
    a_bar, b_bar = legendre_system(q, theta)
    expected_a = torch.linalg.matrix_exp(a)
    torch.testing.assert_close(a_bar, expected_a, **F64)
    expected_b = torch.linalg.solve(a, (expected_a - torch.eye(q, dtype=torch.float64)) @ b)
    torch.testing.assert_close(b_bar, expected_b, **F64)
    assert torch.linalg.eigvals(a).real.max() < 0
    assert torch.linalg.eigvals(a_bar).abs().max() < 1


def test_zoh_equals_an_euler_integration_of_one_step():
    """x' = A x + B u over one unit step: from x(0) = e_j with u = 0 it ends at Abar e_j, from
    x(0) = 0 with u = 1 at Bbar. Explicit Euler with n and 2n sub-steps, combined by
    Richardson extrapolation (2 E_2n - E_n) to second order: the error falls as 1 / n^2
    (measured 1.5e-8 at n = 4000, 2.4e-9 at n = 10000), so 1e-8 at n = 10000; a wrong
    entry of Abar or Bbar is off by far more."""
    q, theta = 4, 5.0
    a, b = legendre_ab(q, theta)
    starts = torch.cat(
        [torch.eye(q, dtype=torch.float64), torch.zeros(q, 1, dtype=torch.float64)], 1
    )
    drive = torch.cat([torch.zeros(q, q, dtype=torch.float64), b[:, None]], 1)  # u per column

    def euler(n: int) -> torch.Tensor:
        x, h = starts.clone(), 1.0 / n
        for _ in range(n):
            x = x + h * (a @ x + drive)
        return x

    n = 10000
    end = 2 * euler(2 * n) - euler(n)
    a_bar, b_bar = zoh(a, b)
    torch.testing.assert_close(end[:, :q], a_bar, rtol=0, atol=1e-8)
    torch.testing.assert_close(end[:, q], b_bar, rtol=0, atol=1e-8)


def test_zoh_keeps_the_dc_gain():
    """sum_k Abar^k Bbar = (I - Abar)^{-1} Bbar = -A^{-1} B = e_0: the discrete memory of a
    constant input is that of the continuous one (zero-order hold is exact for it)."""
    a_bar, b_bar = legendre_system(16, 40.0)
    steady = torch.linalg.solve(torch.eye(16, dtype=torch.float64) - a_bar, b_bar)
    torch.testing.assert_close(steady, torch.eye(16, dtype=torch.float64)[0], rtol=0, atol=1e-10)


def shifted_legendre(i: int, r: float) -> float:
    """P~_i(r) = (-1)^i sum_j C(i, j) C(i+j, j) (-r)^j, the Legendre polynomial on [0, 1]."""
    return (-1) ** i * sum(math.comb(i, j) * math.comb(i + j, j) * (-r) ** j for j in range(i + 1))


def test_the_memory_holds_the_window_in_legendre_coefficients():
    """Voelker et al. (2019), equation 3: u(t - r theta) ~ sum_i P~_i(r) m_i(t) for r in
    [0, 1]. For a smooth input (periods of 250 and 400 steps, theta = 60, q = 12) the
    decoded delays are within 0.013 of the input (measured: the order-12 Pade approximation
    of the delay and the zero-order hold's staircase); the bound 0.03 still fails any wrong
    sign or index in A or B, which leaves O(1) errors."""
    q, theta, length = 12, 60.0, 800
    t = torch.arange(length, dtype=torch.float64)

    def signal(s: torch.Tensor) -> torch.Tensor:
        return torch.sin(2 * math.pi * s / 400) + 0.5 * torch.cos(2 * math.pi * s / 250)

    a_bar, b_bar = legendre_system(q, theta)
    m, _ = memory_loop(signal(t).view(1, length, 1), a_bar, b_bar, torch.zeros(1, 1, q).double())
    later = slice(300, None)  # after the start-up transient
    for r in (0.0, 0.5, 1.0):
        p = torch.tensor([shifted_legendre(i, r) for i in range(q)], dtype=torch.float64)
        decoded = m[0, later, 0] @ p
        assert (decoded - signal(t[later] - r * theta)).abs().max() < 0.03, r


# --------------------------------------------------- impulse response, FFT


def test_power_sequence_equals_repeated_products():
    g = torch.Generator().manual_seed(0)
    a = 0.3 * torch.randn(5, 5, generator=g, dtype=torch.float64)
    v = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    for length in (1, 2, 3, 5, 8, 13):
        got = power_sequence(a, v, length)
        rows, x = [], v
        for _ in range(length):
            rows.append(x)
            x = x @ a.T
        torch.testing.assert_close(got, torch.stack(rows, dim=-2), **F64)


def test_impulse_response_equals_the_recurrence_on_a_unit_impulse():
    """H_k = Abar^k Bbar (the doubling) equals m_k of m_k = Abar m_{k-1} + Bbar u_k run step
    by step from m = 0 on u = (1, 0, 0, ...); and the FFT form returns it too."""
    q, length = 6, 37
    a_bar, b_bar = legendre_system(q, 9.0)
    m, ms = torch.zeros(1, 1, q, dtype=torch.float64), []
    for k in range(length):
        m = memory_step(m, torch.full((1, 1), float(k == 0), dtype=torch.float64), a_bar, b_bar)
        ms.append(m[0, 0])
    by_steps = torch.stack(ms)
    torch.testing.assert_close(power_sequence(a_bar, b_bar, length), by_steps, **F64)
    impulse = torch.zeros(1, length, 1, dtype=torch.float64)
    impulse[0, 0, 0] = 1.0
    zero = torch.zeros(1, 1, q, dtype=torch.float64)
    torch.testing.assert_close(memory_fft(impulse, a_bar, b_bar, zero)[0][0, :, 0], by_steps, **F64)


def random_case(batch=3, length=29, channels=2, q=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, length, channels, generator=g, dtype=dtype)
    m0 = torch.randn(batch, channels, q, generator=g, dtype=dtype)
    mask = torch.rand(batch, length, generator=g) > 0.3
    mask[0] = True  # no padding
    mask[1:, :7] = False  # left padding, then holes
    mask[-1, -5:] = False  # right padding too
    return u, m0, mask


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("fresh", [False, True])
def test_fft_form_equals_the_loop(with_mask, fresh):
    u, m0, mask = random_case()
    m0 = torch.zeros_like(m0) if fresh else m0
    mask = mask if with_mask else None
    a_bar, b_bar = legendre_system(5, 7.0)
    m_loop, final_loop = memory_loop(u, a_bar, b_bar, m0, mask)
    m_fft, final_fft = memory_fft(u, a_bar, b_bar, m0, mask)
    torch.testing.assert_close(final_fft, final_loop, **F64)
    if mask is None:
        torch.testing.assert_close(m_fft, m_loop, **F64)
    else:  # outputs at masked positions are unspecified
        torch.testing.assert_close(m_fft[mask], m_loop[mask], **F64)


def test_fft_form_of_an_all_masked_row_keeps_the_state():
    u, m0, _ = random_case(batch=2)
    mask = torch.zeros(2, u.shape[1], dtype=torch.bool)
    mask[1] = True
    a_bar, b_bar = legendre_system(5, 7.0)
    _, final = memory_fft(u, a_bar, b_bar, m0, mask)
    torch.testing.assert_close(final[0], m0[0], **F64)
    torch.testing.assert_close(final[1], memory_loop(u, a_bar, b_bar, m0)[1][1], **F64)


def test_fft_form_gradients_equal_the_loops():
    u, m0, mask = random_case(length=17)
    a_bar, b_bar = legendre_system(5, 7.0)
    w = torch.randn(*u.shape, 5, generator=torch.Generator().manual_seed(4), dtype=u.dtype)

    def grads(memory):
        uu, mm = u.clone().requires_grad_(True), m0.clone().requires_grad_(True)
        m, final = memory(uu, a_bar, b_bar, mm, mask)
        loss = (m * w * mask[..., None, None]).sum() + (final**2).sum()
        return torch.autograd.grad(loss, [uu, mm])

    for got, want in zip(grads(memory_fft), grads(memory_loop)):
        torch.testing.assert_close(got, want, **F64)


def test_fft_form_in_float32_over_a_long_sequence():
    """float32 over T = 2048 at the default order and window against float64 (the FFT form,
    equal to the loop in float64 above, and 10x faster to run here): the FFT's rounding is
    relative to the whole sequence's scale (measured 3e-7 of it here); 1e-4 of the memory's
    scale catches any wrong term (O(1))."""
    u, m0, _ = random_case(batch=2, length=2048, channels=2, q=32, seed=1)
    a_bar, b_bar = legendre_system(32, 256.0)
    m_ref, final_ref = memory_fft(u, a_bar, b_bar, m0)
    m32, final32 = memory_fft(u.float(), a_bar, b_bar, m0.float())
    scale = m_ref.abs().max()
    assert (m32.double() - m_ref).abs().max() <= 1e-4 * scale
    assert (final32.double() - final_ref).abs().max() <= 1e-4 * scale


# ----------------------------------------------------------------- layers


def test_the_system_stays_float64_in_a_float32_layer_and_is_not_saved():
    layer = L.get("parallel_lmu", d_model=16, order=8, theta=20.0)
    a_bar, b_bar = layer.system(torch.device("cpu"))
    assert a_bar.dtype == b_bar.dtype == torch.float64
    torch.testing.assert_close(a_bar, legendre_system(8, 20.0)[0], rtol=0, atol=0)
    assert not any("bar" in key for key in layer.state_dict())


def test_defaults_and_state_sizes():
    full, parallel = L.get("lmu", d_model=64), L.get("parallel_lmu", d_model=64)
    for layer in (full, parallel):
        assert (layer.order, layer.theta, layer.memory_d) == (32, 256.0, 8)
    assert full.hidden_size == 64 and full.out_proj is None
    assert full.state_size == 8 * 32 + 64 and parallel.state_size == 8 * 32
    assert L.get("lmu", d_model=4).memory_d == 1
    assert L.get("lmu", d_model=16, hidden_size=24).out_proj.weight.shape == (16, 24)


def test_parallel_lmu_auto_mode_follows_the_measured_crossover(monkeypatch):
    """fft from 16 tokens on while batch x memory_d x order <= 2048, else the loop (the
    layer's docstring has the measurements); a forward in auto mode uses its batch size."""
    layer = L.get("parallel_lmu", d_model=64)  # memory_d 8, order 32: 256 rows per sequence
    assert layer.resolve_mode(15) == "recurrent" and layer.resolve_mode(16) == "fft"
    assert layer.auto_mode(4096, batch=8) == "fft"
    assert layer.auto_mode(4096, batch=9) == "recurrent"
    assert L.get("lmu", d_model=8).resolve_mode(4096) == "recurrent"
    calls = []
    for name in ("memory_fft", "memory_loop"):
        op = getattr(lmu_module, name)
        monkeypatch.setattr(lmu_module, name, lambda *a, op=op: calls.append(op.__name__) or op(*a))
    layer(torch.randn(8, 20, 64))
    layer(torch.randn(9, 20, 64))
    assert calls == ["memory_fft", "memory_loop"]


def test_lmu_init_is_the_ports():
    """As hrshtv/pytorch-lmu's port of the paper: e_m = 0, e_x and e_h LeCun uniform
    (|w| <= sqrt(3 / fan_in)), W_* Xavier normal (std sqrt(2 / (fan_in + fan_out)), where
    torch's default init would give 1 / sqrt(3 fan_in), 42% less here)."""
    layer = L.get("lmu", d_model=64)
    assert not layer.e_m.any()
    assert layer.e_x.abs().max() <= math.sqrt(3 / 64)
    std = math.sqrt(2 / (64 + 64))  # W_h: fan_in = fan_out = 64
    assert abs(layer.W_h.std().item() - std) < 0.1 * std


@pytest.mark.parametrize(
    "name,kwargs,message",
    [
        ("lmu", dict(order=0), "order"),
        ("lmu", dict(theta=0.0), "theta"),
        ("parallel_lmu", dict(theta=float("inf")), "theta"),
        ("lmu", dict(memory_d=0), "memory_d"),
        ("lmu", dict(hidden_size=-1), "hidden_size"),
        ("parallel_lmu", dict(activation="softmax"), "activation"),
    ],
)
def test_bad_options_are_refused_by_name(name, kwargs, message):
    with pytest.raises(ArgumentError, match=message):
        L.get(name, d_model=8, **kwargs)


@pytest.mark.parametrize("name", ["gelu", "tanh", "identity"])
def test_parallel_lmu_other_activations_equal_the_reference(name):
    """The harness runs the default (ReLU); the other choices of f against the float64
    reference, in both modes, from a random state."""
    torch.manual_seed(0)
    layer = L.get("parallel_lmu", d_model=8, order=3, theta=2.0, memory_d=3, activation=name)
    layer = layer.double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, 8, generator=g, dtype=torch.float64)
    m0 = torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    y_ref, final_ref = run_parallel_lmu(layer, x, m0)
    for mode in layer.modes:
        layer.mode = mode
        y, final = layer(x, m0)
        torch.testing.assert_close(y, y_ref, **F64)
        torch.testing.assert_close(final, final_ref, **F64)


def test_lmu_runs_wholly_in_float32_under_bfloat16_autocast():
    """The hidden-to-memory feedback amplifies bfloat16's rounding of the input projections
    (measured 6e-2 relative at T 1024), so the full LMU runs in float32: autocast changes
    nothing."""
    torch.manual_seed(0)
    layer = L.get("lmu", d_model=16)
    x = torch.randn(2, 40, 16)
    y32, _ = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = layer(x)
    assert y.dtype == state["m"].dtype == torch.float32
    torch.testing.assert_close(y, y32, rtol=0, atol=0)
