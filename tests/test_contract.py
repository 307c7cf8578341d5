"""The generic contract harness: every registered layer, in each of its modes.

Registering a layer (and its float64 reference recurrence in tests/reference/) puts it under
every test here with no new test code. See docs/contract.md for what the contract promises.
"""

from __future__ import annotations

import pytest
import torch

import statewise.kernels
import statewise.layers as L
from statewise.ops.tree import tree_leaves, tree_map, tree_unflatten
from tests.reference import REFERENCES

D = 8  # d_model of the harness
B, T = 3, 13  # an odd length, so chunks and pieces are uneven
PIECES = (4, 1, 8)
LENGTHS = (13, 9, 5)  # for the padded-batch tests

# float64: the forms are algebraically equal, so they differ only by rounding (~1e-16 per op).
F64 = dict(rtol=1e-9, atol=1e-10)
# float32 against the float64 reference: eps is 1.2e-7 and a T=13 recurrence of D=8 dot
# products accumulates a few hundred roundings; 1e-4 relative to the output scale leaves
# room for that and still catches any wrong term (which is O(1)).
F32_REL = 1e-4

# a case is a registered layer name, or "name:variant" for the layer built with other options
NAMES = sorted(REFERENCES)
CASES = [(case, mode) for case in NAMES for mode in L.info(REFERENCES[case].layer).modes]
IDS = [f"{c}-{m}" for c, m in CASES]


@pytest.fixture(autouse=True, params=statewise.kernels.available())
def backend(request):
    """Every test here runs once per backend (the pure-PyTorch twins, and numba's kernels
    when numba is installed): each kernel must keep every promise its twin keeps."""
    with statewise.kernels.use(request.param):
        yield request.param


def make_layer(case: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> L.SequenceMixer:
    """The layer at harness size, with every parameter nudged off its (often symmetric) init."""
    torch.manual_seed(seed)
    ref = REFERENCES[case]
    layer = L.get(ref.layer, d_model=D, **ref.kwargs).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


def random_state(case: str, layer: L.SequenceMixer, batch: int, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    ref = REFERENCES[case]
    if ref.random_state is not None:
        return ref.random_state(layer, batch, g)

    def draw(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point() or t.is_complex():
            return 0.5 * torch.randn(t.shape, generator=g, dtype=t.dtype)
        return torch.randint(0, 5, t.shape, generator=g, dtype=t.dtype)

    return tree_map(draw, layer.init_state(batch))


def inputs(batch: int = B, length: int = T, seed: int = 3, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, D, generator=g, dtype=dtype)


def float_leaves(state) -> list[torch.Tensor]:
    return [t for t in tree_leaves(state) if t.is_floating_point() or t.is_complex()]


def assert_tree_close(actual, expected, **tol) -> None:
    a, e = tree_leaves(actual), tree_leaves(expected)
    assert len(a) == len(e)
    for x, y in zip(a, e):
        torch.testing.assert_close(x, y, **tol)


def with_grad(state):
    return tree_map(lambda t: t.detach().clone().requires_grad_(t.is_floating_point()), state)


def row(state, i: int):
    return tree_map(lambda t: t[i : i + 1], state)


# ------------------------------------------------------------------ registry


def test_every_layer_has_a_reference():
    missing = sorted(set(L.names()) - set(REFERENCES))
    assert not missing, f"layers without a float64 reference in tests/reference/: {missing}"
    assert {"lstm", "gru", "rnn", "mingru", "retnet"} <= set(L.names())


@pytest.mark.parametrize("name", L.names())
def test_state_size_formula(name):
    for d in (16, 64):
        layer = L.get(name, d_model=d)
        assert eval(L.info(name).state_size, {"d": d}) == layer.state_size, name


@pytest.mark.parametrize("name", L.names())
def test_auto_mode_picks_one_of_the_modes(name):
    layer = make_layer(name)
    assert layer.mode == "auto"
    for length in (1, 64, 4096):
        assert layer.resolve_mode(length) in layer.modes


# ------------------------------------------------------------ equivalences


@pytest.mark.parametrize("name,mode", CASES, ids=IDS)
def test_mode_equals_reference(name, mode):
    layer = make_layer(name)
    layer.mode = mode
    x, state = inputs(), random_state(name, layer, B)
    y, final = layer(x, state)
    y_ref, final_ref = REFERENCES[name].run(layer, x, state)
    torch.testing.assert_close(y, y_ref, **F64)
    assert_tree_close(final, final_ref, **F64)
    # state=None means a fresh state
    y0, _ = layer(x)
    y0_ref, _ = REFERENCES[name].run(layer, x, layer.init_state(B))
    torch.testing.assert_close(y0, y0_ref, **F64)


@pytest.mark.parametrize("name,mode", CASES, ids=IDS)
def test_pieces_equal_whole(name, mode):
    layer = make_layer(name)
    layer.mode = mode
    x, state = inputs(), random_state(name, layer, B)
    y_whole, final_whole = layer(x, state)
    ys, s = [], state
    for piece in torch.split(x, PIECES, dim=1):
        y, s = layer(piece, s)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, dim=1), y_whole, **F64)
    assert_tree_close(s, final_whole, **F64)


@pytest.mark.parametrize("name", NAMES)
def test_step_equals_reference(name):
    layer = make_layer(name)
    x, state = inputs(), random_state(name, layer, B)
    ys, s = [], state
    for t in range(T):
        y_t, s = layer.step(x[:, t], s)
        ys.append(y_t)
    y_ref, final_ref = REFERENCES[name].run(layer, x, state)
    torch.testing.assert_close(torch.stack(ys, dim=1), y_ref, **F64)
    assert_tree_close(s, final_ref, **F64)
    # state=None means a fresh state
    y_none, _ = layer.step(x[:, 0])
    y_fresh, _ = layer.step(x[:, 0], layer.init_state(B))
    torch.testing.assert_close(y_none, y_fresh, rtol=0, atol=0)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("name,mode", CASES, ids=IDS)
def test_padded_batch_equals_each_alone(name, mode, side):
    layer = make_layer(name)
    layer.mode = mode
    state = random_state(name, layer, len(LENGTHS))
    # padding positions hold garbage that must not leak into the real tokens
    x = inputs(len(LENGTHS), T, seed=5) * 3
    mask = torch.zeros(len(LENGTHS), T, dtype=torch.bool)
    for i, n in enumerate(LENGTHS):
        real = slice(0, n) if side == "right" else slice(T - n, T)
        mask[i, real] = True
    y, final = layer(x, state, mask=mask)
    assert torch.isfinite(y).all()
    for i, n in enumerate(LENGTHS):
        real = slice(0, n) if side == "right" else slice(T - n, T)
        y_alone, final_alone = layer(x[i : i + 1, real], row(state, i))
        torch.testing.assert_close(y[i : i + 1, real], y_alone, **F64)
        assert_tree_close(row(final, i), final_alone, **F64)


# packed rows: (start, length) of each document; row 0 resets at t = 0 as well (its given
# state must be dropped), row 1's first document continues the given state, row 2 ends in
# padding and has a one-token document
PACKED = (((0, 5), (5, 8)), ((0, 3), (3, 6), (9, 4)), ((0, 2), (2, 1), (3, 6)))
PACKED_RESET_AT_0 = (True, False, False)


@pytest.mark.parametrize("name,mode", CASES, ids=IDS)
def test_packed_documents_equal_each_alone(name, mode):
    """layer(x, state, mask, resets): each document of a packed row gets what the float64
    reference gives it alone, from the initial state (or, for a row's first document
    without a reset, from the row's given state); padding still carries the state."""
    layer = make_layer(name)
    layer.mode = mode
    state = random_state(name, layer, len(PACKED))
    x = inputs(len(PACKED), T, seed=7)
    resets = torch.zeros(len(PACKED), T, dtype=torch.bool)
    mask = torch.zeros(len(PACKED), T, dtype=torch.bool)
    for i, docs in enumerate(PACKED):
        for start, n in docs:
            resets[i, start] = start > 0 or PACKED_RESET_AT_0[i]
            mask[i, start : start + n] = True
    y, final = layer(x, state, mask=mask, resets=resets)
    for i, docs in enumerate(PACKED):
        for j, (start, n) in enumerate(docs):
            continues = j == 0 and not PACKED_RESET_AT_0[i]
            begin = row(state, i) if continues else layer.init_state(1)
            part = slice(start, start + n)
            y_ref, final_ref = REFERENCES[name].run(layer, x[i : i + 1, part], begin)
            torch.testing.assert_close(y[i : i + 1, part], y_ref, **F64)
        assert_tree_close(row(final, i), final_ref, **F64)  # the row's last document's


@pytest.mark.parametrize("name", NAMES)
def test_gradients_agree_across_modes_and_reference(name):
    """d(loss)/d(parameters, input, initial state) in every mode equals the reference's."""
    base = make_layer(name)
    x0, s0 = inputs(), random_state(name, base, B)
    g = torch.Generator().manual_seed(7)
    w_y = torch.randn(B, T, D, generator=g, dtype=torch.float64)

    def grads(run):
        layer = make_layer(name)
        x, s = x0.clone().requires_grad_(True), with_grad(s0)
        y, final = run(layer, x, s)
        loss = (y * w_y).sum() + sum((t**2).sum() for t in float_leaves(final))
        params = [p for p in layer.parameters()]
        out = torch.autograd.grad(loss, [*params, x, *float_leaves(s)], allow_unused=True)
        return [
            torch.zeros_like(t) if gr is None else gr
            for t, gr in zip([*params, x, *float_leaves(s)], out)
        ]

    expected = grads(lambda layer, x, s: REFERENCES[name].run(layer, x, s))
    for mode in base.modes:

        def run(layer, x, s, mode=mode):
            layer.mode = mode
            return layer(x, s)

        for got, want in zip(grads(run), expected):
            torch.testing.assert_close(got, want, **F64, msg=lambda m, mode=mode: f"{mode}: {m}")


@pytest.mark.parametrize("name,mode", CASES, ids=IDS)
def test_gradcheck(name, mode):
    layer = make_layer(name)
    layer.mode = mode
    x, state = inputs(2, 4), random_state(name, layer, 2)
    leaves = tree_leaves(state)
    float_idx = [i for i, t in enumerate(leaves) if t.is_floating_point()]

    def fn(x, *float_state):
        full = list(leaves)
        for i, t in zip(float_idx, float_state):
            full[i] = t
        y, final = layer(x, tree_unflatten(state, full))
        return (y, *float_leaves(final))

    args = (x.requires_grad_(True), *(leaves[i].clone().requires_grad_(True) for i in float_idx))
    # fast_mode compares u^T J v (random u, v) of the backward with the finite difference
    # instead of every column of J: 14 s instead of 203 s for the 244 cases. With tolerances
    # 1000x tighter than the full check's (float64 and eps 1e-6 leave about 1e-10 of
    # finite-difference error) it is at least as strict. Measured 2026-12-06 by multiplying
    # one gradient by 1.001 (grad_a of ops.scan._LoopRecurrence.backward, torch backend;
    # grad_x of kernels.selective_scan.backward, numba backend): this check failed 11 and 2
    # cases, the full check at atol 1e-5, rtol 1e-3 failed 10 and 1 (fast_mode at those
    # tolerances: 1 of the first 10), and with the correct backwards all 244 cases pass.
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)


@pytest.mark.parametrize("name,mode", CASES, ids=IDS)
def test_float32_agrees_with_float64_reference(name, mode):
    layer = make_layer(name)
    layer32 = make_layer(name, dtype=torch.float32)
    layer32.load_state_dict({k: v.float() for k, v in layer.state_dict().items()})
    layer32.mode = mode
    x, state = inputs(), random_state(name, layer, B)
    y32, final32 = layer32(x.float(), tree_map(_to32, state))
    y_ref, final_ref = REFERENCES[name].run(layer, x, state)
    scale = max(1.0, y_ref.abs().max().item())
    assert (y32.double() - y_ref).abs().max().item() <= F32_REL * scale
    for a, e in zip(float_leaves(final32), float_leaves(final_ref)):
        s = max(1.0, e.abs().max().item())
        assert (a.double() - e).abs().max().item() <= F32_REL * s


def _to32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() else t


# --------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", L.names())
def test_bad_input_raises_clear_errors(name):
    layer = make_layer(name)
    x = inputs()
    bad_calls = {
        "x must have shape": lambda: layer(x[0]),
        "width": lambda: layer(inputs()[..., :-1]),
        "NaN or inf": lambda: layer(torch.where(x > 1, float("nan"), x)),
        "dtype": lambda: layer(x.float()),
        "state does not fit": lambda: layer(x, layer.init_state(B + 1)),
        "state does not fit ": lambda: layer(x, tree_map(_to32, layer.init_state(B))),
        "mask must be a bool": lambda: layer(x, mask=torch.ones(B, T)),
        "mask must have shape": lambda: layer(x, mask=torch.ones(B, T + 1, dtype=torch.bool)),
        "x_t must have shape": lambda: layer.step(x),
        "batch_size": lambda: layer.init_state(0),
    }
    for message, call in bad_calls.items():
        with pytest.raises((ValueError, TypeError), match=message.strip()):
            call()
    with pytest.raises(ValueError, match="mode must be"):
        layer.mode = "no-such-mode"
    with pytest.raises(ValueError, match="unknown layer"):
        L.get("no-such-layer", d_model=D)
