"""The numba short-conv kernels against a loop over the taps written from the definition."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("numba", reason="the numba backend is not installed")

from statewise import kernels  # noqa: E402
from statewise.kernels import conv as kernel  # noqa: E402
from statewise.ops.conv import causal_conv1d  # noqa: E402


def reference(u, weight, bias, window):
    """out[b, t, c] = bias[c] + sum_j weight[c, j] x[b, t - K + 1 + j, c], x = [window, u],
    one output at a time."""
    batch, seq_len, channels = u.shape
    k = weight.shape[1]
    x = torch.cat([window, u], dim=1)
    out = torch.zeros(batch, seq_len, channels, dtype=u.dtype)
    for t in range(seq_len):
        for j in range(k):
            out[:, t] += weight[:, j] * x[:, t + j]
    return out if bias is None else out + bias


def draw(batch, seq_len, channels, k, with_bias, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()

    bias = rand(channels) if with_bias else None
    return rand(batch, seq_len, channels), rand(channels, k), bias, rand(batch, k - 1, channels)


CASES = [  # (B, T, C, K): T below K - 1, and across the blocks of time steps
    (2, 37, 5, 4),
    (3, 1, 70, 4),
    (1, 2, 129, 3),
    (2, 9, 8, 1),
    (1, 520, 7, 4),  # three blocks of time steps
]


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("batch,seq_len,channels,k", CASES)
def test_kernel_forward_and_gradients_equal_the_definition(batch, seq_len, channels, k, with_bias):
    u, w, bias, window = draw(batch, seq_len, channels, k, with_bias)
    inputs = [t for t in (u, w, bias, window) if t is not None]
    want = reference(u, w, bias, window)
    grad_out = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, inputs, grad_out)
    with kernels.use("numba"):
        got, new_window = causal_conv1d(u, w, bias, window)
    got_grads = torch.autograd.grad(got, inputs, grad_out, retain_graph=True)
    # with create_graph the backward runs the twin's differentiable formulas instead
    graph_grads = torch.autograd.grad(got, inputs, grad_out, create_graph=True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, h, r in zip(got_grads, graph_grads, want_grads):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h, r, rtol=1e-12, atol=1e-12)
    full = torch.cat([window, u], dim=1)
    assert torch.equal(new_window, full[:, full.shape[1] - (k - 1) :])


def test_kernel_runs_in_float32_and_with_a_mask_like_the_twin():
    u, w, bias, window = draw(2, 50, 96, 4, True, dtype=torch.float32, seed=1)
    mask = torch.rand(2, 50, generator=torch.Generator().manual_seed(2)) > 0.3
    outs, grads = {}, {}
    for backend in ("torch", "numba"):
        with kernels.use(backend):
            out, new_window = causal_conv1d(u, w, bias, window, mask)
        # masked outputs are unused: compare the real steps, and the carried window
        loss = (out[mask] ** 2).sum() + new_window.sum()
        grads[backend] = torch.autograd.grad(loss, (u, w, bias, window))
        outs[backend] = (out[mask], new_window)
    # float32: a K-term sum in another order, eps 1.2e-7 relative to the terms
    for a, b in zip(outs["numba"], outs["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads["numba"], grads["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_gradcheck_and_gradgradcheck_through_the_kernel():
    u, w, bias, window = draw(2, 6, 3, 3, True)
    with kernels.use("numba"):
        conv = lambda *a: causal_conv1d(*a)[0]  # noqa: E731
        assert torch.autograd.gradcheck(conv, (u, w, bias, window))
        assert torch.autograd.gradgradcheck(conv, (u, w, bias, window))


def test_kernel_is_used_only_where_it_applies():
    u = torch.randn(1, 4, 3)
    w = torch.randn(3, 2)
    assert kernel.supported(u, w)
    assert not kernel.supported(u.to(torch.float16), w.to(torch.float16))
    assert not kernel.supported(u, w.double())
