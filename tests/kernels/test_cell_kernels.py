"""The fused paths of the nonlinear cells against their twin, the loop over time.

- statewise.kernels.cells (numba, head-wise lstm / gru / rnn_tanh / slstm) against the
  torch loop: outputs, final states and every gradient (inputs, initial state, all
  weights and biases), with masks and random initial states, one head and several.
- ATen's fused sequence ops (torch.lstm / gru / rnn_tanh / rnn_relu), which run_cell uses
  without a mask, against the same loop.
"""

from __future__ import annotations

import pytest
import torch

import statewise.kernels
import statewise.layers as L
from statewise.ops.cells import CellWeights, run_cell
from statewise.ops.tree import tree_leaves

# float64: the same arithmetic in another order, so a few ulps per op over T steps
F64 = dict(rtol=1e-10, atol=1e-12)
# float32: the kernel evaluates its gate formulas in float64 and the loop in float32, and
# sums in another order; over T = 9 steps (and through the slstm's exponential gates) the
# two differ by a few hundred float32 roundings (eps 1.2e-7), so the error is measured
# against the tensor's scale: 1e-4 of its largest entry (as the contract harness does),
# which still catches any wrong term (O(1) relative)
F32_REL = 1e-4


def assert_close(got: torch.Tensor, want: torch.Tensor, msg: str = "") -> None:
    if want.dtype == torch.float64:
        torch.testing.assert_close(got, want, **F64, msg=msg or None)
        return
    scale = max(want.abs().max().item(), 1e-3)
    err = (got - want).abs().max().item()
    assert err <= F32_REL * scale, f"{msg}: max error {err:.2e} > {F32_REL} * {scale:.2e}"


B, T, D = 5, 9, 12  # B = 5 splits into uneven batch blocks when one head runs on 2 threads

needs_numba = pytest.mark.skipif(
    "numba" not in statewise.kernels.available(), reason="numba is not installed"
)


def _mask() -> torch.Tensor:
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 5:] = False  # right padding
    mask[2, :3] = False  # left padding
    mask[3, 4] = False  # a hole
    return mask


def _nudged(layer: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    layer = layer.to(dtype)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


def _random_state(name: str, layer: L.SequenceMixer, dtype: torch.dtype):
    g = torch.Generator().manual_seed(5)
    if name == "slstm":  # a reachable state: n >= 1, |c| < n
        n = 1.0 + 2.0 * torch.rand(B, D, generator=g, dtype=dtype)
        return {
            "h": torch.rand(B, D, generator=g, dtype=dtype) - 0.5,
            "c": n * (torch.rand(B, D, generator=g, dtype=dtype) - 0.5),
            "n": n,
            "m": torch.randn(B, D, generator=g, dtype=dtype),
        }
    state = layer.init_state(B, dtype=dtype)
    if name == "lstm":
        return tuple(torch.randn(s.shape, generator=g, dtype=dtype) for s in state)
    return torch.randn(state.shape, generator=g, dtype=dtype)


def _run_and_grads(layer, x, state, mask, backend):
    """y, the final state and d(loss)/d(x, state, parameters) under ``backend``."""
    leaves = [t.clone().requires_grad_(True) for t in tree_leaves(state)]
    if isinstance(state, dict):
        state_in = dict(zip(state, leaves))
    elif isinstance(state, tuple):
        state_in = tuple(leaves)
    else:
        state_in = leaves[0]
    x = x.clone().requires_grad_(True)
    with statewise.kernels.use(backend):
        y, final = layer(x, state_in, mask=mask)
    g = torch.Generator().manual_seed(7)
    w = torch.randn(y.shape, generator=g, dtype=y.dtype)
    loss = (y * w).sum() + sum((f**2).sum() for f in tree_leaves(final))
    grads = torch.autograd.grad(loss, [x, *leaves, *layer.parameters()])
    return [y, *tree_leaves(final), *grads]


CASES = [
    ("lstm", {}),
    ("lstm", {"n_heads": 3}),
    ("gru", {}),
    ("gru", {"n_heads": 2, "hidden_size": 8}),
    ("rnn", {}),
    ("rnn", {"n_heads": 4}),
    ("slstm", {"n_heads": 3}),
    ("slstm", {"n_heads": 1}),
]


# one head without a mask runs ATen's op under every backend: nothing to compare there
KERNEL_CASES = [
    (name, kw, masked)
    for name, kw in CASES
    for masked in (False, True)
    if masked or name == "slstm" or kw.get("n_heads", 1) > 1
]


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "name,kw,masked", KERNEL_CASES, ids=[f"{n}-{kw}-mask{m}" for n, kw, m in KERNEL_CASES]
)
def test_kernel_equals_twin(name, kw, masked, dtype):
    """numba kernel == torch loop: values, final state, all gradients."""
    torch.manual_seed(0)
    layer = _nudged(L.get(name, d_model=D, **kw), dtype)
    x = torch.randn(B, T, D, dtype=dtype)
    state = _random_state(name, layer, dtype)
    mask = _mask() if masked else None
    want = _run_and_grads(layer, x, state, mask, "torch")
    got = _run_and_grads(layer, x, state, mask, "numba")
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert_close(a, b, f"output {i}")


@needs_numba
def test_slstm_kernel_from_the_empty_state():
    """The zero state (an empty memory, m taken as -inf) through the kernel and the loop."""
    torch.manual_seed(1)
    layer = _nudged(L.get("slstm", d_model=D, n_heads=2), torch.float64)
    x = torch.randn(B, T, D, dtype=torch.float64)
    state = layer.init_state(B, dtype=torch.float64)
    want = _run_and_grads(layer, x, state, _mask(), "torch")
    got = _run_and_grads(layer, x, state, _mask(), "numba")
    for a, b in zip(got, want, strict=True):
        assert_close(a, b)


# ----------------------------------------------------------- ATen's fused op


def _cell_weights(cell: str, width: int, hidden: int, proj: int = 0) -> CellWeights:
    gates = {"lstm": 4, "gru": 3}.get(cell, 1)
    g = torch.Generator().manual_seed(2)

    def rand(*shape):
        return (0.4 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_(True)

    out = proj or hidden
    return CellWeights(
        rand(gates * hidden, width),
        rand(gates * hidden, out),
        rand(gates * hidden),
        rand(gates * hidden),
        rand(proj, hidden) if proj else None,
    )


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize(
    "cell,proj", [("lstm", 0), ("lstm", 3), ("gru", 0), ("rnn_tanh", 0), ("rnn_relu", 0)]
)
def test_aten_sequence_equals_loop(cell, proj, reverse):
    """run_cell without a mask (ATen's fused op) == the loop over time, with gradients."""
    hidden = 6
    w = _cell_weights(cell, D, hidden, proj)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64, requires_grad=True)
    out = proj or hidden
    h0 = torch.randn(B, out, generator=g, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(B, hidden, generator=g, dtype=torch.float64, requires_grad=True)
    state = (h0, c0) if cell == "lstm" else h0
    inputs = [x, h0, *([c0] if cell == "lstm" else []), *(p for p in w if p is not None)]

    def run(fused):
        y, final = run_cell(cell, x, state, w, reverse=reverse, fused=fused)
        outs = [y, *tree_leaves(final)]
        loss = sum((o * torch.linspace(-1, 1, o.shape[-1], dtype=o.dtype)).sum() for o in outs)
        return outs + list(torch.autograd.grad(loss, inputs))

    for a, b in zip(run(True), run(False), strict=True):
        assert_close(a, b)
