"""statewise.ops.scan: the loop and the doubling scan against a float64 loop from the equation."""

from __future__ import annotations

import pytest
import torch

from statewise.ops.scan import (
    MODES,
    linear_recurrence,
    linear_recurrence_loop,
    linear_recurrence_scan,
)

F64 = dict(rtol=1e-10, atol=1e-12)
FORMS = [linear_recurrence_loop, linear_recurrence_scan]
FORM_IDS = ["loop", "scan"]


def reference(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t, written out one step at a time."""
    a, b = torch.broadcast_tensors(a, b)
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0
    out = []
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


def draw(*shape, dtype=torch.float64, seed=0, low=-1.0, high=1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype.is_complex:
        real = torch.empty(*shape, 2, dtype=torch.float64).uniform_(low, high, generator=g)
        return torch.view_as_complex(real * 0.7).to(dtype)
    return torch.empty(*shape, dtype=dtype).uniform_(low, high, generator=g)


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
@pytest.mark.parametrize("seq_len", [1, 2, 3, 8, 13, 64])
def test_forms_equal_reference(form, seq_len):
    a, b, h0 = draw(2, seq_len, 5, seed=1), draw(2, seq_len, 5, seed=2), draw(2, 5, seed=3)
    torch.testing.assert_close(form(a, b, h0), reference(a, b, h0), **F64)
    torch.testing.assert_close(form(a, b), reference(a, b, None), **F64)


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
@pytest.mark.parametrize(
    "a_shape", [(2, 9, 3, 4), (2, 9, 3, 1), (1, 9, 3, 4), (2, 1, 3, 4)], ids=str
)
def test_trailing_dims_and_broadcast_a(form, a_shape):
    a, b, h0 = draw(*a_shape, seed=4), draw(2, 9, 3, 4, seed=5), draw(2, 3, 4, seed=6)
    out = form(a, b, h0)
    assert out.shape == b.shape
    torch.testing.assert_close(out, reference(a, b, h0), **F64)


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
def test_a_zero_resets_and_a_one_sums(form):
    b, h0 = draw(2, 11, 4, seed=7), draw(2, 4, seed=8)
    # a = 0 everywhere: h_t = b_t, the initial state forgotten at once
    torch.testing.assert_close(form(torch.zeros_like(b), b, h0), b, rtol=0, atol=0)
    # a = 1 everywhere: a running sum
    torch.testing.assert_close(form(torch.ones_like(b), b, h0), h0[:, None] + b.cumsum(1), **F64)
    # a = 0 at one step: nothing before it matters afterwards (exact, no NaN)
    a = draw(2, 11, 4, seed=9)
    a[:, 6] = 0.0
    out = form(a, b, h0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference(a, b, h0), **F64)
    torch.testing.assert_close(out[:, 6:], reference(a[:, 6:], b[:, 6:], None), **F64)


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
def test_complex(form):
    a, b = (draw(2, 10, 3, dtype=torch.complex128, seed=s) for s in (10, 11))
    h0 = draw(2, 3, dtype=torch.complex128, seed=12)
    torch.testing.assert_close(form(a, b, h0), reference(a, b, h0), **F64)
    # a real decay with a complex input and state (the LRU's shape of problem)
    a_real = draw(2, 10, 3, seed=13, low=0.0)
    out = form(a_real, b, h0)
    assert out.dtype == torch.complex128
    torch.testing.assert_close(out, reference(a_real, b, h0), **F64)


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
def test_empty_sequence(form):
    b = torch.zeros(2, 0, 3, dtype=torch.float64)
    assert form(b, b, torch.ones(2, 3, dtype=torch.float64)).shape == (2, 0, 3)


def test_float32_long_sequence_agrees():
    # a close to 1 over a long sequence: where log-space scans lose precision
    a = draw(2, 3000, 8, seed=14, low=0.99, high=1.0).float()
    b = draw(2, 3000, 8, seed=15).float()
    want = reference(a.double(), b.double(), None)
    scale = want.abs().max()
    for form in FORMS:
        assert (form(a, b).double() - want).abs().max() <= 1e-5 * scale


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=str)
def test_gradients_equal_across_forms(dtype):
    a = draw(2, 13, 3, 2, dtype=dtype, seed=16)
    a[:, 4] = 0.0  # a reset inside the sequence
    b, h0 = draw(2, 13, 3, 2, dtype=dtype, seed=17), draw(2, 3, 2, dtype=dtype, seed=18)
    w = draw(2, 13, 3, 2, dtype=dtype, seed=19)

    def grads(fn):
        leaves = [t.clone().requires_grad_(True) for t in (a, b, h0)]
        loss = (fn(*leaves) * w.conj()).real.sum()
        return torch.autograd.grad(loss, leaves)

    want = grads(reference)
    for form in FORMS:
        for got, exp in zip(grads(form), want):
            torch.testing.assert_close(got, exp, **F64)


def test_gradients_of_a_broadcast_and_real_a():
    a = draw(2, 7, 3, 1, seed=20, low=0.0)  # real, broadcast over the last dim
    b = draw(2, 7, 3, 4, dtype=torch.complex128, seed=21)
    h0 = draw(2, 3, 4, dtype=torch.complex128, seed=22)
    w = draw(2, 7, 3, 4, dtype=torch.complex128, seed=23)

    def grads(fn):
        leaves = [t.clone().requires_grad_(True) for t in (a, b, h0)]
        loss = (fn(*leaves) * w.conj()).real.sum()
        return torch.autograd.grad(loss, leaves)

    want = grads(reference)
    for form in FORMS:
        got = grads(form)
        assert got[0].shape == a.shape and got[0].dtype == a.dtype
        for x, y in zip(got, want):
            torch.testing.assert_close(x, y, **F64)


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=str)
def test_gradcheck(form, dtype):
    a = draw(2, 5, 3, dtype=dtype, seed=24).requires_grad_(True)
    b = draw(2, 5, 3, dtype=dtype, seed=25).requires_grad_(True)
    h0 = draw(2, 3, dtype=dtype, seed=26).requires_grad_(True)
    assert torch.autograd.gradcheck(form, (a, b, h0))


def test_loop_double_backward():
    args = [draw(1, 5, 2, seed=s).requires_grad_(True) for s in (27, 28)]
    args.append(draw(1, 2, seed=29).requires_grad_(True))
    assert torch.autograd.gradgradcheck(linear_recurrence_loop, args)


def test_dispatch_and_errors():
    a, b = draw(2, 6, 3, seed=30), draw(2, 6, 3, seed=31)
    for mode, form in zip(MODES, FORMS):
        torch.testing.assert_close(linear_recurrence(a, b, None, mode), form(a, b), **F64)
    with pytest.raises(ValueError, match="mode must be"):
        linear_recurrence(a, b, None, "log")
    with pytest.raises(ValueError, match="same rank"):
        linear_recurrence(a[:, :, 0], b)
    with pytest.raises(ValueError, match="broadcast"):
        linear_recurrence(draw(2, 6, 4), b)
    with pytest.raises(ValueError, match="broadcast to b"):
        linear_recurrence(draw(2, 6, 3, 2), draw(2, 6, 3, 1))
    with pytest.raises(ValueError, match="h0 must have shape"):
        linear_recurrence(a, b, torch.zeros(2, 4, dtype=torch.float64))
