"""The fused numba selective scan against its torch twin and a loop from the equations."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("numba", reason="the numba backend is not installed")

import statewise.layers as L  # noqa: E402
from statewise import kernels  # noqa: E402
from statewise.kernels import selective_scan as kernel  # noqa: E402
from statewise.ops.selective_scan import selective_scan  # noqa: E402

F64 = dict(rtol=1e-9, atol=1e-10)
# float32 kernel against the float64 twin: each step rounds a N-term dot product and the
# state to float32 (eps 1.2e-7); over T <= 130 steps with |a| <= 1 the error stays well
# below 1e-4 of each output's scale, while any wrong term is O(1).
F32_REL = 1e-4


def reference(x, dt, A, B, C, D, h0, negative):
    """y_t = C_t . h_t + D x_t with h_t = a_t h_{t-1} + dt_t x_t B_t, one step at a time."""
    h = torch.zeros(x.shape[0], *A.shape, dtype=x.dtype) if h0 is None else h0
    ys = []
    for t in range(x.shape[1]):
        a = torch.exp(dt[:, t, :, None] * A)
        if negative:
            a = 2 * a - 1
        h = a * h + (dt[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        y = (h * C[:, t, None, :]).sum(-1)
        ys.append(y if D is None else y + D * x[:, t])
    return torch.stack(ys, dim=1), h


def draw(batch, seq_len, width, n_state, dtype=torch.float64, seed=0, masked=False):
    """(x, dt, A, B, C, D, h0), dt > 0 (= 0 at masked steps), A < 0."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    x, B, C = (
        rand(batch, seq_len, width),
        rand(batch, seq_len, n_state),
        rand(batch, seq_len, n_state),
    )
    dt = torch.nn.functional.softplus(rand(batch, seq_len, width) - 1.0)
    if masked:  # a padded batch: the last steps of element 0 and every third step of 1
        dt[0, seq_len // 2 :] = 0.0
        dt[-1, ::3] = 0.0
    A = -torch.exp(0.5 * rand(width, n_state))
    D, h0 = rand(width), rand(batch, width, n_state)
    return [t.to(dtype) for t in (x, dt, A, B, C, D, h0)]


def run(backend, args, negative=False, mode="loop"):
    """(y, h_T, and the gradients of all inputs) of a random linear loss, under ``backend``."""
    leaves = [t.clone().requires_grad_(True) if t is not None else None for t in args]
    with kernels.use(backend):
        y, h = selective_scan(*leaves, mode=mode, negative_eigenvalues=negative)
    g = torch.Generator().manual_seed(7)
    wy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
    wh = torch.randn(h.shape, generator=g, dtype=torch.float64).to(h.dtype)
    inputs = [t for t in leaves if t is not None]
    grads = torch.autograd.grad((y * wy).sum() + (h * wh).sum(), inputs)
    return (y, h, *grads)


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


# T = 130: three checkpoint chunks (64, 64, 2); width 70: two channel blocks (64, 6)
SIZES = [(2, 1, 3, 4), (2, 13, 5, 3), (3, 130, 70, 5), (1, 64, 2, 1)]


@pytest.mark.parametrize("negative", [False, True], ids=["exp", "negative"])
@pytest.mark.parametrize("size", SIZES, ids=str)
def test_kernel_equals_twin_and_reference(calls, size, negative):
    args = draw(*size, seed=1)
    got, want = run("numba", args, negative), run("torch", args, negative)
    assert calls[0] == 1
    y_ref, h_ref = reference(*args, negative)
    torch.testing.assert_close(got[0], y_ref, **F64)
    torch.testing.assert_close(got[1], h_ref, **F64)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **F64)


@pytest.mark.parametrize("rows", [1, 2], ids=lambda r: f"rows{r}")
def test_decays_made_in_blocks_of_rows(calls, monkeypatch, rows):
    # exp(dt A) is made by blocks of batch rows when a whole chunk would exceed
    # DECAY_ELEMENTS: 3 rows in blocks of 1 or 2, over three chunks (64, 64, 2 steps)
    batch, seq_len, width, n_state = 3, 130, 7, 3
    monkeypatch.setattr(kernel, "DECAY_ELEMENTS", rows * kernel.CHECKPOINT * width * n_state)
    args = draw(batch, seq_len, width, n_state, seed=8)
    got, want = run("numba", args, negative=True), run("torch", args, negative=True)
    assert calls[0] == 1
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **F64)


@pytest.mark.parametrize("negative", [False, True], ids=["exp", "negative"])
def test_masked_steps_carry_the_state(calls, negative):
    args = draw(2, 70, 6, 4, seed=2, masked=True)
    got, want = run("numba", args, negative), run("torch", args, negative)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **F64)
    # element 0 is masked from step 35 on: its final state is the state after step 34
    x, dt, A, B, C, D, h0 = args
    _, h_half = reference(x[:1, :35], dt[:1, :35], A, B[:1, :35], C[:1, :35], D, h0[:1], negative)
    torch.testing.assert_close(got[1][:1], h_half, **F64)


def test_no_skip_no_initial_state(calls):
    x, dt, A, B, C, _, _ = draw(2, 9, 4, 3, seed=3)
    args = [x, dt, A, B, C, None, None]
    got, want = run("numba", args), run("torch", args)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **F64)
    assert calls[0] == 1


def test_float32_against_float64_twin(calls):
    args = draw(2, 130, 70, 5, seed=4)
    got = run("numba", [t.float() for t in args], negative=True)
    want = run("torch", args, negative=True)
    assert calls[0] == 1
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        assert (g.double() - w).abs().max() <= F32_REL * max(1.0, w.abs().max().item())


def test_forward_without_grad_and_twin_cases(calls):
    args = draw(2, 9, 4, 3, seed=5)
    with torch.no_grad(), kernels.use("numba"):
        y, h = selective_scan(*args)
    y_ref, h_ref = reference(*args, False)
    torch.testing.assert_close(y, y_ref, **F64)
    torch.testing.assert_close(h, h_ref, **F64)
    assert calls[0] == 1
    with kernels.use("numba"):
        selective_scan(*args, mode="scan")  # the doubling scan: the twin's form
        selective_scan(*(t.float() if t.dim() == 2 else t for t in args))  # mixed dtypes
        y0, h0 = selective_scan(
            *(t[:, :0] if t.dim() == 3 and t.shape[1] == 9 else t for t in args)
        )
    assert calls[0] == 1
    assert y0.shape == (2, 0, 4)


def test_gradcheck(calls):
    x, dt, A, B, C, D, h0 = (t.requires_grad_(True) for t in draw(2, 5, 3, 2, seed=6))

    def fn(*args):
        return selective_scan(*args, negative_eigenvalues=True)

    with kernels.use("numba"):
        assert torch.autograd.gradcheck(fn, (x, dt, A, B, C, D, h0))
    assert calls[0] > 0


def test_mamba_layer_same_under_both_backends(calls):
    torch.manual_seed(0)
    layer = L.get("mamba", d_model=8).double()
    x = torch.randn(2, 70, 8, dtype=torch.float64)
    out = {}
    for backend in ("numba", "torch"):
        layer.zero_grad()
        with kernels.use(backend):
            y, _ = layer(x)
        y.square().sum().backward()
        out[backend] = [y] + [p.grad.clone() for p in layer.parameters()]
    assert calls[0] == 1
    for g, w in zip(out["numba"], out["torch"]):
        torch.testing.assert_close(g, w, **F64)
