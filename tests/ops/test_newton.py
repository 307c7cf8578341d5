"""statewise.ops.newton against the sequential loop, in float64.

The cells are ParaGRU's (diagonal Jacobian, written out), ParaLSTM's ((c, h) 2x2 blocks, by
forward-mode autodiff) and an Elman cell tanh(w h + u) whose Newton iterations overflow
for a large w.
"""

from __future__ import annotations

import math

import pytest
import torch

from statewise.layers.paracell import (
    paragru_cell,
    paragru_jacobian,
    paralstm_cell,
    paralstm_jacobian,
)
from statewise.ops.newton import (
    jvp_jacobian,
    newton_options,
    newton_recurrence,
    newton_solve,
    sequential_recurrence,
)

F64 = dict(rtol=1e-10, atol=1e-12)
B, T, H = 2, 17, 5


def draw(*shape, scale=1.0, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


def elman(h: torch.Tensor, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.tanh(w * h + u)


def gru_problem(seed=0, scale=1.0):
    """(cell, jacobian, block, h0, xs, params) of a ParaGRU."""
    g = draw(B, T, 3, H, scale=2.0, seed=seed)
    a = draw(3, H, scale=scale, seed=seed + 1)
    return paragru_cell, paragru_jacobian, 1, draw(B, H, seed=seed + 2), (g,), (a,)


def lstm_problem(seed=0, autodiff=False):
    """(cell, jacobian, block, ...) of a ParaLSTM; J written out or by forward-mode AD."""
    g = draw(B, T, 3, H, scale=2.0, seed=seed)
    a, p = draw(3, H, seed=seed + 1), draw(2, H, seed=seed + 2)
    jac = None if autodiff else paralstm_jacobian
    return paralstm_cell, jac, 2, draw(B, H, 2, seed=seed + 3), (g,), (a, p)


PROBLEMS = {
    "gru": gru_problem,
    "lstm": lstm_problem,
    "lstm-autodiff": lambda: lstm_problem(autodiff=True),
}


def random_mask(seed=5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0, :3] = False  # a masked start: the state must pass through from h0
    return mask


# ----------------------------------------------------------------- forward


@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
@pytest.mark.parametrize("kind", PROBLEMS)
def test_newton_equals_loop(kind, masked):
    f, jac, block, h0, xs, params = PROBLEMS[kind]()
    mask = random_mask() if masked else None
    opts = newton_options(block=block)
    h, report = newton_solve(f, h0, xs, params, mask, jac, opts)
    assert not report.fallback and report.iterations <= T
    torch.testing.assert_close(h, sequential_recurrence(f, h0, xs, params, mask), **F64)


def test_k_iterations_make_the_first_k_plus_1_steps_exact():
    """Each Newton iteration fixes at least one more step, so T - 1 iterations are exact."""
    u, w = draw(B, T, H, seed=3), torch.full((H,), 3.0, dtype=torch.float64)
    h0 = draw(B, H, seed=4)
    exact = sequential_recurrence(elman, h0, (u,), (w,))
    prefix_errors = []
    for k in range(1, T):
        h, report = newton_solve(elman, h0, (u,), (w,), options=newton_options(iterations=k))
        assert report.iterations == k and not report.fallback
        torch.testing.assert_close(h[:, : k + 1], exact[:, : k + 1], **F64)
        prefix_errors.append((h - exact).abs().max().item())
    assert prefix_errors[-1] < 1e-12
    assert prefix_errors[0] > 1e-3  # the test is not trivial: one iteration is not enough


def test_tol_stops_early_and_converges_quadratically():
    f, jac, _, h0, xs, params = gru_problem()
    exact = sequential_recurrence(f, h0, xs, params)
    loose, rep_loose = newton_solve(
        f, h0, xs, params, jacobian=jac, options=newton_options(tol=1e-3)
    )
    tight, rep_tight = newton_solve(
        f, h0, xs, params, jacobian=jac, options=newton_options(tol=1e-12)
    )
    assert rep_loose.change <= 1e-3 and rep_tight.change <= 1e-12
    assert rep_loose.iterations < rep_tight.iterations <= T
    # one iteration after a change of 1e-3 the error is far below 1e-3 (quadratic)
    assert (loose - exact).abs().max().item() < 1e-4
    torch.testing.assert_close(tight, exact, **F64)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_written_jacobian_equals_autodiff(kind):
    f, jac, block, h0, xs, params = PROBLEMS[kind](seed=9)
    h_prev = draw(B, T, *h0.shape[1:], seed=10)
    value, j_written = jac(h_prev, *xs, *params)
    value_ad, j_ad = jvp_jacobian(f, block)(h_prev, *xs, *params)
    torch.testing.assert_close(value, value_ad, **F64)
    torch.testing.assert_close(j_written, j_ad, **F64)


def test_block_jacobian_equals_dense_autograd_jacobian():
    f, _, _, _, xs, params = lstm_problem()
    s = draw(1, 1, H, 2, seed=11)
    _, blocks = jvp_jacobian(f, 2)(s, xs[0][:1, :1], *params)
    dense = torch.autograd.functional.jacobian(lambda v: f(v, xs[0][:1, :1], *params), s)
    dense = dense.reshape(H, 2, H, 2)
    for unit in range(H):
        torch.testing.assert_close(blocks[0, 0, unit], dense[unit, :, unit, :], **F64)
    off_block = dense.clone()
    for unit in range(H):
        off_block[unit, :, unit, :] = 0
    assert off_block.abs().max() == 0  # the Jacobian really is block-diagonal


# ---------------------------------------------------------------- backward


@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
@pytest.mark.parametrize("kind", PROBLEMS)
def test_one_solve_backward_equals_autograd_through_loop(kind, masked):
    f, jac, block, h0, xs, params = PROBLEMS[kind]()
    mask = random_mask() if masked else None
    w = draw(B, T, *h0.shape[1:], seed=12)

    def grads(run):
        leaves = [t.clone().requires_grad_(True) for t in (h0, *xs, *params)]
        out = run(leaves[0], leaves[1 : 1 + len(xs)], leaves[1 + len(xs) :])
        loss = (out * w).sum() + (out[:, -1] ** 2).sum()
        return out, torch.autograd.grad(loss, leaves)

    opts = newton_options(block=block)
    out, got = grads(lambda s, x, p: newton_recurrence(f, s, x, p, mask, jac, opts))
    assert type(out.grad_fn).__name__ == "_ImplicitGradientBackward"  # no unrolled iterations
    _, want = grads(lambda s, x, p: sequential_recurrence(f, s, x, p, mask))
    for g_got, g_want in zip(got, want):
        torch.testing.assert_close(g_got, g_want, **F64)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_gradcheck(kind):
    f, jac, block, h0, xs, params = PROBLEMS[kind]()
    h0, g = h0[:1, :2].clone(), xs[0][:1, :5, :, :2].clone()
    params = tuple(p[:, :2].clone() for p in params)
    opts = newton_options(block=block)

    def fn(h0, g, *params):
        return newton_recurrence(f, h0, (g,), params, None, jac, opts)

    args = [t.requires_grad_(True) for t in (h0, g, *params)]
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6)


# ------------------------------------------------------- damping, fallback


def test_divergent_newton_falls_back_and_clipping_converges():
    """tanh(50 h + u) with tiny u: J ~ 50 at the first guess (h ~ u), so the linearised
    recurrence overflows (50^200 u); the fallback still returns the loop's answer. Clipping J
    to [-1, 1] keeps every solve bounded, and the at-most-T-iterations guarantee gives the
    exact answer."""
    seq_len = 200
    u = draw(B, seq_len, H, scale=1e-6, seed=13)
    w, h0 = torch.full((H,), 50.0, dtype=torch.float64), torch.zeros(B, H, dtype=torch.float64)
    exact = sequential_recurrence(elman, h0, (u,), (w,))

    h, report = newton_solve(elman, h0, (u,), (w,), options=newton_options(tol=1e-12))
    assert report.fallback and not math.isfinite(report.change)
    torch.testing.assert_close(h, exact, **F64)

    options = newton_options(tol=1e-12, max_iterations=seq_len, jacobian_clip=1.0)
    h, report = newton_solve(elman, h0, (u,), (w,), options=options)
    assert not report.fallback and report.iterations <= seq_len
    torch.testing.assert_close(h, exact, **F64)


def test_fallback_gradients_equal_the_loop():
    """Large GRU weights: Newton does not converge in 8 iterations and falls back; the
    backward (one adjoint solve at the loop's solution) is still exact."""
    seq_len = 256
    g, a = draw(1, seq_len, 3, H, scale=2.0, seed=14), draw(3, H, scale=10.0, seed=15)
    h0 = torch.zeros(1, H, dtype=torch.float64)
    opts = newton_options(max_iterations=8)
    _, report = newton_solve(paragru_cell, h0, (g,), (a,), None, paragru_jacobian, opts)
    assert report.fallback

    def grad_of(run):
        a_ = a.clone().requires_grad_(True)
        return torch.autograd.grad(run(a_).sum(), a_)[0]

    got = grad_of(lambda a_: newton_recurrence(paragru_cell, h0, (g,), (a_,), None, None, opts))
    want = grad_of(lambda a_: sequential_recurrence(paragru_cell, h0, (g,), (a_,)))
    torch.testing.assert_close(got, want, **F64)


def test_fixed_iterations_that_overflow_fall_back():
    u = draw(B, 400, H, scale=1e-6, seed=16)
    w, h0 = torch.full((H,), 50.0, dtype=torch.float64), torch.zeros(B, H, dtype=torch.float64)
    h, report = newton_solve(elman, h0, (u,), (w,), options=newton_options(iterations=3))
    assert report.fallback
    torch.testing.assert_close(h, sequential_recurrence(elman, h0, (u,), (w,)), **F64)


# ----------------------------------------------------------------- options


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(iterations=0), "iterations must be a positive int"),
        (dict(iterations=2.5), "iterations must be a positive int"),
        (dict(iterations=True), "iterations must be a positive int"),
        (dict(max_iterations=-1), "max_iterations must be a positive int"),
        (dict(tol=0.0), "tol must be a positive finite number"),
        (dict(tol=float("nan")), "tol must be a positive finite number"),
        (dict(tol=float("inf")), "tol must be a positive finite number"),
        (dict(jacobian_clip=-1.0), "jacobian_clip must be a positive finite number"),
        (dict(iterations=3, tol=1e-6), "give either iterations"),
        (dict(iterations=3, max_iterations=5), "give either iterations"),
        (dict(block=0), "block must be a positive int"),
    ],
)
def test_bad_options_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        newton_options(**kwargs)


def test_block_must_match_the_state():
    f, _, _, h0, xs, params = lstm_problem()
    with pytest.raises(ValueError, match="block=2 needs a state"):
        newton_recurrence(f, h0[..., 0], xs, params, options=newton_options(block=2))


def test_layer_rejects_bad_newton_options():
    import statewise.layers as L

    with pytest.raises(ValueError, match="give either iterations"):
        L.get("paragru", d_model=4, iterations=3, tol=1e-6)
    with pytest.raises(ValueError, match="tol must be"):
        L.get("paralstm", d_model=4, tol=-1.0)


def test_empty_sequence():
    f, jac, _, h0, xs, params = gru_problem()
    out = newton_recurrence(f, h0, (xs[0][:, :0],), params, jacobian=jac)
    assert out.shape == (B, 0, H)
