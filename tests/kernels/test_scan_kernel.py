"""The numba diagonal-recurrence kernel against its torch twin and a loop from the equation."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("numba", reason="the numba backend is not installed")

from statewise import kernels  # noqa: E402
from statewise.kernels import scan as kernel  # noqa: E402
from statewise.ops.scan import linear_recurrence_loop  # noqa: E402
from tests.ops.test_scan import draw, reference  # noqa: E402  (the same loop and draws)

F64 = dict(rtol=1e-10, atol=1e-12)
# float32 kernel against the float64 twin: the kernel rounds each step to float32
# (eps 1.2e-7); over T <= 40 steps with |a| <= 1 a few hundred roundings stay below 1e-5
# of the output scale, while any wrong term is O(1).
F32_REL = 1e-5


def run(backend: str, a, b, h0):
    """(out, dL/da, dL/db, dL/dh0) of a random linear loss, under ``backend``."""
    leaves = [t.clone().requires_grad_(True) for t in (a, b, h0) if t is not None]
    with kernels.use(backend):
        out = linear_recurrence_loop(*leaves)
        wide = torch.complex128 if out.is_complex() else torch.float64
        w = draw(*out.shape, dtype=wide, seed=99).to(out.dtype)
        grads = torch.autograd.grad((out * w.conj()).real.sum(), leaves)
    return (out, *grads)


@pytest.fixture
def calls(monkeypatch):
    """Counts the kernel's forward calls (so a test knows the kernel, not the twin, ran)."""
    count = [0]
    forward = kernel.forward

    def spy(*args):
        count[0] += 1
        return forward(*args)

    monkeypatch.setattr(kernel, "forward", spy)
    return count


SHAPES = [  # (a shape, b shape)
    ((2, 9, 5), (2, 9, 5)),
    ((3, 17, 3, 4), (3, 17, 3, 4)),
    ((2, 9, 3, 1), (2, 9, 3, 4)),  # a per channel, b per (channel, state): Mamba/S4D
    ((1, 9, 3, 4), (2, 9, 3, 4)),  # a shared over batch
    ((2, 1, 3, 4), (2, 9, 3, 4)),  # a constant in time (the LRU's lambda)
    ((1, 1, 1, 4), (2, 9, 3, 4)),
    ((2, 9, 1, 4), (2, 9, 3, 4)),
    ((2, 9, 3, 1, 4), (2, 9, 3, 5, 4)),  # mixed: full, broadcast, full
    ((2, 9, 1), (2, 9, 1)),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=str)
@pytest.mark.parametrize("a_shape,b_shape", SHAPES, ids=str)
def test_kernel_equals_twin_and_reference(calls, dtype, a_shape, b_shape):
    a, b = draw(*a_shape, dtype=dtype, seed=1), draw(*b_shape, dtype=dtype, seed=2)
    h0 = draw(b_shape[0], *b_shape[2:], dtype=dtype, seed=3)
    got, want = run("numba", a, b, h0), run("torch", a, b, h0)
    assert calls[0] == 1
    torch.testing.assert_close(got[0], reference(a, b, h0), **F64)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w, **F64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64], ids=str)
@pytest.mark.parametrize("a_shape,b_shape", SHAPES[:4], ids=str)
def test_float32_against_float64_twin(calls, dtype, a_shape, b_shape):
    wide = torch.float64 if dtype == torch.float32 else torch.complex128
    a, b = draw(*a_shape, dtype=wide, seed=4), draw(*b_shape, dtype=wide, seed=5)
    h0 = draw(b_shape[0], *b_shape[2:], dtype=wide, seed=6)
    got = run("numba", a.to(dtype), b.to(dtype), h0.to(dtype))
    want = run("torch", a, b, h0)
    assert calls[0] == 1
    for g, w in zip(got, want):
        assert g.dtype == dtype
        assert (g.to(wide) - w).abs().max() <= F32_REL * max(1.0, w.abs().max().item())


def test_real_a_with_complex_b_and_none_h0(calls):
    a = draw(2, 7, 3, 1, seed=7, low=0.0)  # real decay, complex input: the LRU
    b = draw(2, 7, 3, 4, dtype=torch.complex128, seed=8)
    for h0 in (None, draw(2, 3, 4, dtype=torch.complex128, seed=9)):
        got, want = run("numba", a, b, h0), run("torch", a, b, h0)
        assert got[1].dtype == torch.float64 and got[1].shape == a.shape
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **F64)
    assert calls[0] == 2


def test_edge_lengths_and_resets(calls):
    b, h0 = draw(2, 11, 4, seed=10), draw(2, 4, seed=11)
    with kernels.use("numba"):
        empty = linear_recurrence_loop(b[:, :0], b[:, :0], h0)
        one_step = linear_recurrence_loop(b[:, :1], b[:, :1], h0)
        zeros = linear_recurrence_loop(torch.zeros_like(b), b, h0)
        a = draw(2, 11, 4, seed=12)
        a[:, 6] = 0.0  # a reset: nothing before step 6 matters afterwards
        reset = linear_recurrence_loop(a, b, h0)
    assert empty.shape == (2, 0, 4)
    torch.testing.assert_close(one_step[:, 0], b[:, 0] * h0 + b[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(zeros, b, rtol=0, atol=0)
    torch.testing.assert_close(reset, reference(a, b, h0), **F64)
    torch.testing.assert_close(reset[:, 6:], reference(a[:, 6:], b[:, 6:], None), **F64)
    assert calls[0] == 3  # T = 0 never reaches the kernel
    got, want = run("numba", a, b, h0), run("torch", a, b, h0)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **F64)


@pytest.mark.parametrize("a_shape", [(1, 5, 128, 256), (1, 5, 1, 256), (1, 5, 128, 1)], ids=str)
def test_parallel_tasks_split_rows_or_columns(calls, monkeypatch, a_shape):
    """Batch 1 is split into row or column blocks (never along an axis a is broadcast on)."""
    monkeypatch.setattr(kernel, "PARALLEL_MIN_ELEMENTS", 0)
    a, b = draw(*a_shape, seed=13), draw(1, 5, 128, 256, seed=14)
    h0 = draw(1, 128, 256, seed=15)
    got, want = run("numba", a, b, h0), run("torch", a, b, h0)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **F64)
    assert calls[0] == 1


def test_twin_runs_when_the_kernel_cannot(calls):
    a, b = draw(2, 6, 3, seed=16), draw(2, 6, 3, seed=17)
    with kernels.use("numba"):
        half = linear_recurrence_loop(a.bfloat16(), b.bfloat16())
    with kernels.use("torch"):
        linear_recurrence_loop(a, b)
    assert half.dtype == torch.bfloat16
    assert calls[0] == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=str)
def test_gradcheck_and_double_backward(calls, dtype):
    args = [
        draw(2, 5, 3, 2, dtype=dtype, seed=18),
        draw(2, 5, 3, 2, dtype=dtype, seed=19),
        draw(2, 3, 2, dtype=dtype, seed=20),
    ]
    args = [t.requires_grad_(True) for t in args]
    with kernels.use("numba"):
        assert torch.autograd.gradcheck(linear_recurrence_loop, args)
        # create_graph: the backward switches to the twin's differentiable one
        assert torch.autograd.gradgradcheck(linear_recurrence_loop, args)
    assert calls[0] > 0
