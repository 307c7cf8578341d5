"""Fuzzed inputs to every registered layer (issue 17, point 7, the layer part).

hypothesis draws the arguments of ``forward``, ``step`` and ``init_state``: shapes (wrong
rank, wrong width, an empty batch, batch 1, length 0 and 1), dtypes (float32, float64,
bfloat16, float16, complex, ints, bool; the layer's own parameters in float32 or float64),
masks (all-False rows, random rows, padding on either side, wrong shape or dtype), states
(fresh, reached by a forward, of another batch or dtype, a wrong structure, garbage leaves,
NaN, negative counters), values (normal, 1e30, 1e-30, subnormal, near the dtype's maximum,
and mixtures of these) and memory layouts (transposed, strided and broadcast views).

Each example either works or raises one of the documented error types, ``ArgumentError``
or ``ArgumentTypeError``, naming the argument; never another exception, and never a hang
(each call runs under an alarm). Working means: an output of the input's shape and dtype,
finite outputs and a finite state of the layer's structure, the inputs left unchanged, the
same result when the call is repeated, and the same result (to rounding) as the call on
contiguous copies of every tensor. Inputs of ordinary size (|x| up to ~10, tiny and
subnormal values included) must work: only values large enough to overflow inside the
layer may be refused, as the input that overflowed.

The default run draws few examples per layer (reproducibly: derandomized); ``-m slow``
draws many more, over every harness variant of every layer (tests/reference).
"""

from __future__ import annotations

import contextlib
import functools
import re
import signal
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

import statewise.layers as L
from statewise.errors import ArgumentError, ArgumentTypeError
from statewise.ops.tree import tree_leaves, tree_map
from tests.fuzz import FUZZ
from tests.reference import REFERENCES

pytestmark = pytest.mark.usefixtures("one_thread")

D = 8  # d_model of every fuzzed layer
DOCUMENTED = (ArgumentError, ArgumentTypeError)
HANG_S = 60.0  # one call of a tiny layer taking longer than this is a hang

# the default run: every registered layer in the harness's small configuration
NAMES = L.names()
# -m slow: every harness case (the layer's variants too), many more examples
CASES = sorted(set(REFERENCES) | set(NAMES))
CI = settings(FUZZ, max_examples=30)
SLOW = settings(FUZZ, max_examples=1000)

FLOATS = (torch.float32, torch.float64)
# value scales; the first three are ordinary inputs that every layer must accept
MUST_WORK = ("normal", "tiny", "subnormal")
SCALES = MUST_WORK + ("huge", "near_max", "mixture")
LAYOUTS = ("contiguous", "transposed", "strided", "reversed", "broadcast")
BAD_DTYPES = (
    torch.float16,
    torch.bfloat16,
    torch.complex64,
    torch.complex128,
    torch.int8,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.bool,
)


# ------------------------------------------------------------------- helpers


@functools.cache
def built(case: str, dtype: torch.dtype) -> L.SequenceMixer:
    """The layer of harness case ``case`` (tests/reference: small sizes, several heads,
    small chunks) at width D, its parameters in ``dtype``."""
    ref = REFERENCES.get(case)
    name, kwargs = (ref.layer, ref.kwargs) if ref is not None else (case, {})
    torch.manual_seed(0)
    return L.get(name, d_model=D, **kwargs).to(dtype)


@contextlib.contextmanager
def no_hang(seconds: float = HANG_S) -> Iterator[None]:
    def alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"a layer call took over {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, Exception | None]:
    """(result, None), or (None, the error) for a documented error type; any other
    exception propagates and fails the test."""
    with no_hang():
        try:
            return fn(*args, **kwargs), None
        except DOCUMENTED as err:
            return None, err


def names_argument(err: Exception, name: str) -> bool:
    """The message names ``name`` as a word (``x`` does not match inside ``x_t``)."""
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", str(err)) is not None


def values(shape: tuple[int, ...], dtype: torch.dtype, scale: str, seed: int) -> torch.Tensor:
    """Random values of one of SCALES, all finite in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    info = torch.finfo(dtype)
    base = torch.randn(shape, generator=g, dtype=torch.float64)
    sign = torch.where(base < 0, -1.0, 1.0).to(torch.float64)
    uniform = torch.rand(shape, generator=g, dtype=torch.float64)
    magnitudes = {
        "normal": 2.0 * base.abs(),
        "tiny": 1e-30 * (1 + uniform),
        "subnormal": info.smallest_normal * uniform / 4,  # below the smallest normal
        "huge": 1e30 * (1 + uniform),
        "near_max": info.max * (0.25 + 0.5 * uniform),
    }
    if scale == "mixture":
        pick = torch.randint(0, len(magnitudes) + 1, shape, generator=g)
        out = torch.zeros(shape, dtype=torch.float64)  # index len(magnitudes): exact zeros
        for i, m in enumerate(magnitudes.values()):
            out = torch.where(pick == i, m, out)
        magnitude = out
    else:
        magnitude = magnitudes[scale]
    out = (sign * magnitude).to(dtype)
    assert torch.isfinite(out).all()
    return out


def laid_out(x: torch.Tensor, layout: str) -> torch.Tensor:
    """``x``'s values (for "broadcast": its first row repeated) in a memory layout."""
    if layout == "contiguous":
        return x.contiguous()
    if layout == "transposed":  # dims 0 and 1 swapped in memory
        return x.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "reversed":  # column-major: every stride reversed
        dims = tuple(range(x.dim() - 1, -1, -1))
        return x.permute(dims).contiguous().permute(dims)
    if layout == "strided":  # every element 2 apart
        return strided(x)
    if layout == "broadcast":  # stride 0 over the batch
        return x[:1].expand_as(x)
    raise AssertionError(layout)


def strided(t: torch.Tensor) -> torch.Tensor:
    """A non-contiguous view holding ``t``'s values, each element 2 apart."""
    big = t.new_zeros(t.shape + (2,))
    big[..., 0] = t
    return big[..., 0]


def structure(state: Any) -> Any:
    """The shape of a state tree: containers, leaf shapes and dtypes (tuple = list)."""
    if isinstance(state, torch.Tensor):
        return (tuple(state.shape), state.dtype)
    if isinstance(state, dict):
        return {k: structure(v) for k, v in state.items()}
    if isinstance(state, (tuple, list)):
        return tuple(structure(v) for v in state)
    return type(state).__name__


def clone(state: Any) -> Any:
    return None if state is None else tree_map(lambda t: t.detach().clone(), state)


def contiguous(state: Any) -> Any:
    return None if state is None else tree_map(lambda t: t.contiguous(), state)


def assert_same(actual: Any, expected: Any, what: str) -> None:
    if actual is None or expected is None:
        assert actual is expected, what
        return
    for u, v in zip(tree_leaves(actual), tree_leaves(expected), strict=True):
        u, v = u.detach(), v.detach()
        assert torch.equal(u, v), f"{what}: max difference {(u - v).abs().max()}"


def assert_close_tree(actual: Any, expected: Any, rtol: float, what: str) -> None:
    for u, v in zip(tree_leaves(actual), tree_leaves(expected), strict=True):
        u, v = u.detach(), v.detach()
        if not u.is_floating_point():
            assert torch.equal(u, v), what
            continue
        atol = rtol * max(1.0, float(v.abs().max()) if v.numel() else 1.0)
        torch.testing.assert_close(u, v, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def named_leaves(state: Any, key: object = None) -> list[tuple[object, torch.Tensor]]:
    """(dict key, leaf) for every floating leaf of a state."""
    if isinstance(state, torch.Tensor):
        return [(key, state)] if state.is_floating_point() else []
    if isinstance(state, dict):
        return [p for k, v in state.items() for p in named_leaves(v, k)]
    return [p for v in state for p in named_leaves(v)]


def leaf_paths(state: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(state, torch.Tensor):
        return [path]
    items = state.items() if isinstance(state, dict) else enumerate(state)
    return [p for k, v in items for p in leaf_paths(v, path + (k,))]


def leaf_at(state: Any, path: tuple) -> Any:
    for k in path:
        state = state[k]
    return state


def replaced(state: Any, path: tuple, new: Any) -> Any:
    """A copy of ``state`` with the leaf at ``path`` replaced by ``new``."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(state, dict):
        return {k: replaced(v, rest, new) if k == head else v for k, v in state.items()}
    return type(state)(replaced(v, rest, new) if i == head else v for i, v in enumerate(state))


# ---------------------------------------------------------------- draws


def draw_layer(data: st.DataObject, case: str) -> L.SequenceMixer:
    layer = built(case, data.draw(st.sampled_from(FLOATS), label="dtype"))
    layer.mode = data.draw(st.sampled_from(("auto",) + layer.modes), label="mode")
    return layer


def draw_mask(data: st.DataObject, batch: int, seq_len: int, seed: int) -> torch.Tensor | None:
    kind = data.draw(
        st.sampled_from(
            ("none", "all_true", "random", "false_rows", "all_false", "left_pad", "strided")
        ),
        label="mask",
    )
    g = torch.Generator().manual_seed(seed + 1)
    if kind == "none":
        return None
    mask = torch.rand(batch, seq_len, generator=g) < 0.6
    if kind == "all_true":
        mask[:] = True
    elif kind == "false_rows":  # some rows all False, the others random
        mask[torch.rand(batch, generator=g) < 0.5] = False
    elif kind == "all_false":
        mask[:] = False
    elif kind == "left_pad":
        lengths = torch.randint(0, seq_len + 1, (batch,), generator=g)
        mask = torch.arange(seq_len)[None, :] >= seq_len - lengths[:, None]
    elif kind == "strided":
        mask = strided(mask)
    return mask


def draw_state(
    data: st.DataObject, layer: L.SequenceMixer, batch: int, dtype: torch.dtype, seed: int
) -> Any:
    """A well-formed state: none, fresh, or reached by a forward (possibly in strided
    memory, or scaled by 1e30: "huge" is the only kind a layer may refuse)."""
    kind = data.draw(
        st.sampled_from(("none", "fresh", "reached", "reached_strided", "huge")), label="state"
    )
    if kind == "none":
        return None, kind
    if kind == "fresh":
        return layer.init_state(batch), kind
    length = data.draw(st.integers(1, 4), label="state_length")
    _, state = layer(values((batch, length, D), dtype, "normal", seed + 2))
    if kind == "reached_strided":
        state = tree_map(strided, state)
    elif kind == "huge":  # (-inf, where a layer allows it, stays -inf)
        state = tree_map(lambda t: t * 1e30 if t.is_floating_point() else t, state)
    return state, kind


# ---------------------------------------------------------- valid inputs


def check_valid_call(case: str, data: st.DataObject) -> None:
    """forward or step on well-formed input of every scale, layout, mask and state."""
    layer = draw_layer(data, case)
    dtype = layer._reference_tensor().dtype
    step = data.draw(st.booleans(), label="step")
    batch = data.draw(st.integers(1, 3), label="batch")
    seq_len = data.draw(st.sampled_from((0, 1, 2, 3, 5, 9)), label="seq_len")
    scale = data.draw(st.sampled_from(SCALES), label="scale")
    layout = data.draw(st.sampled_from(LAYOUTS), label="layout")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    name = "x_t" if step else "x"
    shape = (batch, D) if step else (batch, seq_len, D)
    x = laid_out(values(shape, dtype, scale, seed), layout)
    mask = None if step else draw_mask(data, batch, seq_len, seed)
    state, state_kind = draw_state(data, layer, batch, dtype, seed)
    kwargs = {} if step else {"mask": mask}
    run = layer.step if step else layer

    x_before, state_before = x.clone(), clone(state)
    out, err = call(run, x, state, **kwargs)
    event(f"{'step' if step else 'forward'} {scale}: {'refused' if err else 'worked'}")
    event(f"state {state_kind}: {'refused' if err else 'worked'}")
    ordinary = scale in MUST_WORK and state_kind != "huge"
    if err is not None:
        assert not ordinary, f"a valid {name} of scale {scale!r} was refused: {err}"
        assert isinstance(err, ArgumentError) and names_argument(err, name), err
        assert "too large" in str(err), err
        return
    y, final = out
    assert y.shape == x.shape and y.dtype == x.dtype, (y.shape, y.dtype)
    assert torch.isfinite(y).all(), "non-finite output"
    assert structure(final) == structure(layer.init_state(batch)), "state of another structure"
    for key, leaf in named_leaves(final):
        finite = torch.isfinite(leaf) | ((leaf == -torch.inf) & (key in layer.state_neg_inf))
        assert finite.all(), f"the state {key!r} is not finite"
    assert torch.equal(x, x_before), f"{name} was changed in place"
    assert_same(state, state_before, "the state passed in was changed in place")

    again, err = call(run, x, state, **kwargs)
    assert err is None, f"the same call again raised {err}"
    assert_same(again[0], y, "the same call again gave another output")
    assert_same(again[1], final, "the same call again gave another state")

    tensors = [x, *([] if mask is None else [mask]), *([] if state is None else tree_leaves(state))]
    if not all(t.is_contiguous() for t in tensors):
        if not step:
            kwargs["mask"] = None if mask is None else mask.contiguous()
        dense, err = call(
            run, x.contiguous(), None if state is None else contiguous(state), **kwargs
        )
        if err is not None:
            # at the edge of overflow (values near the dtype's maximum) the other summation
            # order of another memory layout may overflow where this one did not; an
            # ordinary input has no such edge
            assert not ordinary, f"the contiguous copies of a valid input raised {err}"
            assert isinstance(err, ArgumentError) and "too large" in str(err), err
            event("the contiguous copies overflowed (values near the maximum)")
            return
        # a strided view can take another kernel path (another summation order) than its
        # contiguous copy: a few roundings apart, not bitwise equal
        rtol = 1e-5 if dtype == torch.float32 else 1e-12
        assert_close_tree(y, dense[0], rtol, "a non-contiguous input changed the output")
        assert_close_tree(final, dense[1], rtol, "a non-contiguous input changed the state")


# -------------------------------------------------------- invalid inputs


def bad_x(data: st.DataObject, shape: tuple[int, ...], dtype: torch.dtype, seed: int):
    """An invalid x (or x_t) of correct shape ``shape``: (x, expected error type)."""
    kind = data.draw(
        st.sampled_from(
            ("rank", "width", "empty_batch", "dtype", "nonfinite", "not_a_tensor", "meta", "sparse")
        ),
        label="bad_x",
    )
    good = values(shape, dtype, "normal", seed)
    if kind == "rank":
        rank = data.draw(st.integers(0, 5).filter(lambda r: r != len(shape)), label="rank")
        dims = data.draw(st.lists(st.integers(0, 3), min_size=rank, max_size=rank), label="dims")
        if rank and data.draw(st.booleans(), label="width_kept"):
            dims[-1] = D  # the right width in the wrong rank
        return torch.randn(dims, dtype=dtype), ArgumentError
    if kind == "width":
        width = data.draw(st.sampled_from((0, 1, D - 1, D + 1, 2 * D)), label="width")
        return torch.randn(shape[:-1] + (width,), dtype=dtype), ArgumentError
    if kind == "empty_batch":
        return torch.randn((0,) + shape[1:], dtype=dtype), ArgumentError
    if kind == "dtype":
        other = [t for t in FLOATS if t != dtype]
        bad = data.draw(st.sampled_from(BAD_DTYPES + tuple(other)), label="bad_dtype")
        return (good * 3).to(bad), ArgumentTypeError
    if kind == "nonfinite":
        if not good.numel():
            return torch.full(shape[:1] + (1,) * (len(shape) - 2) + (D,), float("nan")), None
        flat = good.flatten()
        where = data.draw(st.lists(st.integers(0, flat.numel() - 1), min_size=1), label="where")
        bad = data.draw(
            st.sampled_from((float("nan"), float("inf"), float("-inf"))), label="nonfinite"
        )
        flat[where] = bad
        layout = data.draw(st.sampled_from(LAYOUTS[:4]), label="layout")
        return laid_out(flat.view(shape), layout), ArgumentError
    if kind == "not_a_tensor":
        garbage = (None, 1.0, "x", good.tolist(), good.numpy(), (good,))
        return data.draw(st.sampled_from(garbage), label="garbage"), ArgumentTypeError
    if kind == "meta":
        return good.to("meta"), ArgumentError
    if kind == "sparse":
        return good.to_sparse(), ArgumentTypeError
    raise AssertionError(kind)


def bad_mask(data: st.DataObject, batch: int, seq_len: int):
    kind = data.draw(st.sampled_from(("shape", "dtype", "not_a_tensor", "meta")), label="bad_mask")
    good = torch.ones(batch, seq_len, dtype=torch.bool)
    if kind == "shape":
        shapes = [
            (batch,),
            (batch, seq_len + 1),
            (batch + 1, seq_len),
            (batch, seq_len, 1),
            (1, batch, seq_len),
            (),
            (seq_len, batch),
        ]
        shape = data.draw(st.sampled_from([s for s in shapes if s != (batch, seq_len)]))
        return torch.ones(shape, dtype=torch.bool), ArgumentError
    if kind == "dtype":
        dtype = data.draw(st.sampled_from((torch.uint8, torch.int64, torch.float32)))
        return good.to(dtype), ArgumentTypeError
    if kind == "not_a_tensor":
        garbage = (good.tolist(), good.numpy(), True, "mask")
        return data.draw(st.sampled_from(garbage), label="garbage"), ArgumentTypeError
    return good.to("meta"), ArgumentError


def bad_state(data: st.DataObject, layer: L.SequenceMixer, batch: int, dtype: torch.dtype):
    """A state that does not fit ``layer`` at ``batch``: always an ArgumentError."""
    fresh = layer.init_state(batch)
    paths = leaf_paths(fresh)
    path = data.draw(st.sampled_from(paths), label="leaf")
    leaf = leaf_at(fresh, path)
    kinds = ["batch", "dtype", "leaf_type", "leaf_shape", "nonfinite", "structure", "meta"]
    if any(not leaf_at(fresh, p).is_floating_point() for p in paths):
        kinds.append("negative_count")
    kind = data.draw(st.sampled_from(kinds), label="bad_state")
    if kind == "batch":
        other = data.draw(st.integers(1, 4).filter(lambda b: b != batch), label="other_batch")
        return layer.init_state(other)
    if kind == "dtype":
        other = data.draw(
            st.sampled_from([t for t in FLOATS + (torch.bfloat16,) if t != dtype]),
            label="other_dtype",
        )
        return layer.init_state(batch, dtype=other)
    if kind == "leaf_type":
        garbage = [0, 1.5, "state", [], (), {}, leaf.numpy(), torch.tensor(0.0)]
        if path:  # (a state of None as a whole is no state: a fresh one)
            garbage.append(None)
        return replaced(fresh, path, data.draw(st.sampled_from(garbage), label="garbage"))
    if kind == "leaf_shape":
        shapes = [leaf.shape[:-1], leaf.shape + (1,), (leaf.shape[0] + 1,) + leaf.shape[1:]]
        if leaf.dim() > 1:
            shapes.append(leaf.shape[:-1] + (leaf.shape[-1] + 1,))
        shape = data.draw(st.sampled_from(shapes), label="leaf_shape")
        return replaced(fresh, path, torch.zeros(shape, dtype=leaf.dtype))
    if kind == "nonfinite":
        floats = [p for p in paths if leaf_at(fresh, p).is_floating_point()]
        p = data.draw(st.sampled_from(floats), label="float_leaf")
        t = leaf_at(fresh, p).clone()
        bad = [float("nan"), float("inf")]
        if not p or p[-1] not in layer.state_neg_inf:  # -inf is valid there (an empty max)
            bad.append(float("-inf"))
        where = data.draw(st.integers(0, t.numel() - 1), label="where")
        t.view(-1)[where] = data.draw(st.sampled_from(bad), label="nonfinite")
        return replaced(fresh, p, t)
    if kind == "negative_count":
        ints = [p for p in paths if not leaf_at(fresh, p).is_floating_point()]
        p = data.draw(st.sampled_from(ints), label="int_leaf")
        t = leaf_at(fresh, p).clone()
        t.view(-1)[0] = -data.draw(st.integers(1, 2**40), label="count")
        return replaced(fresh, p, t)
    if kind == "meta":
        return replaced(fresh, path, leaf.to("meta"))
    # structure: a whole state of another shape
    options: list[Any] = ["state", 3, [], leaf]
    if isinstance(fresh, dict):
        key = data.draw(st.sampled_from(sorted(fresh)), label="key")
        options += [
            {k: v for k, v in fresh.items() if k != key},  # a key missing
            {**fresh, "extra": leaf},  # a key too many
            tuple(fresh.values()),  # the leaves without their names
        ]
    elif isinstance(fresh, (tuple, list)):
        options += [fresh[:-1], tuple(fresh) + (fresh[0],), {"h": fresh[0]}]
    else:
        options += [(fresh,), (fresh, fresh), {"h": fresh}]
    options = [o for o in options if structure(o) != structure(fresh)]
    return data.draw(st.sampled_from(options), label="structure")


def check_invalid_call(case: str, data: st.DataObject) -> None:
    """One argument of forward, step or init_state is wrong: a documented error naming it."""
    layer = draw_layer(data, case)
    dtype = layer._reference_tensor().dtype
    step = data.draw(st.booleans(), label="step")
    batch = data.draw(st.integers(1, 3), label="batch")
    seq_len = data.draw(st.sampled_from((0, 1, 3, 5)), label="seq_len")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    shape = (batch, D) if step else (batch, seq_len, D)
    x = values(shape, dtype, "normal", seed)
    state, mask = None, None
    what = data.draw(
        st.sampled_from(("x", "state", "init_state") if step else ("x", "mask", "state", "mode")),
        label="what",
    )
    expected: type[Exception] | None = ArgumentError
    if what == "x":
        x, expected = bad_x(data, shape, dtype, seed)
        name = "x_t" if step else "x"
    elif what == "mask":
        mask, expected = bad_mask(data, batch, seq_len)
        name = "mask"
    elif what == "state":
        state, name = bad_state(data, layer, batch, dtype), "state"
    elif what == "mode":
        check_bad_mode(data, layer)
        return
    else:
        check_init_state(data, layer)
        return
    if step:
        _, err = call(layer.step, x, state)
    else:
        _, err = call(layer, x, state, mask=mask)
    assert err is not None, f"a bad {name} was accepted"
    assert names_argument(err, name), f"the error does not name {name}: {err}"
    if expected is not None:
        assert isinstance(err, expected), f"{type(err).__name__}: {err}"


def check_bad_mode(data: st.DataObject, layer: L.SequenceMixer) -> None:
    """Setting an unknown mode raises ArgumentError naming it and keeps the mode."""
    known = {m for case in NAMES for m in L.info(case).modes}
    garbage = ["fast", "", "AUTO", " auto", None, 3, ("scan",), *sorted(known)]
    bad = data.draw(st.sampled_from([g for g in garbage if g not in layer.modes]), label="mode")
    before = layer.mode
    _, err = call(setattr, layer, "mode", bad)
    assert isinstance(err, ArgumentError) and names_argument(err, "mode"), err
    assert layer.mode == before


def check_init_state(data: st.DataObject, layer: L.SequenceMixer) -> None:
    """init_state with random arguments: a state of the right structure, or an error."""
    good_batch = st.integers(1, 3)
    batch = data.draw(good_batch | st.sampled_from((0, -1, True, 1.5, "2", None)), label="batch")
    dtype = data.draw(
        st.sampled_from(
            (None, torch.float32, torch.float64, torch.bfloat16)
            + (torch.int64, torch.bool, torch.complex64, "float32", 3, np.float32)
        ),
        label="init_dtype",
    )
    device = data.draw(
        st.sampled_from(
            (None, "cpu", torch.device("cpu"), "meta")
            + (("cuda", 0) if not torch.cuda.is_available() else ())
            + ("garbage", -1, True, 3.5, object(), b"cpu")
        ),
        label="device",
    )
    wrong = [  # the wrong arguments, in the order init_state checks them
        name
        for name, ok in (
            ("batch_size", isinstance(batch, int) and not isinstance(batch, bool) and batch > 0),
            (
                "dtype",
                dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point),
            ),
            ("device", device is None or device in ("cpu", "meta", torch.device("cpu"))),
        )
        if not ok
    ]
    state, err = call(layer.init_state, batch, device=device, dtype=dtype)
    if wrong:
        assert err is not None, f"init_state({batch!r}, {device!r}, {dtype!r}) was accepted"
        assert names_argument(err, wrong[0]), f"the error does not name {wrong[0]}: {err}"
        return
    assert err is None, err
    expected = layer.init_state(batch)
    want_dtype = dtype or layer._reference_tensor().dtype
    want_device = torch.device(device or "cpu")
    for leaf, ref in zip(tree_leaves(state), tree_leaves(expected), strict=True):
        assert leaf.shape == ref.shape and leaf.device == want_device
        assert leaf.dtype == (want_dtype if ref.is_floating_point() else ref.dtype)


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("case", NAMES)
@CI
@given(data=st.data())
def test_valid_inputs_work(case, data):
    check_valid_call(case, data)


@pytest.mark.parametrize("case", NAMES)
@CI
@given(data=st.data())
def test_invalid_inputs_raise_documented_errors(case, data):
    check_invalid_call(case, data)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
@SLOW
@given(data=st.data())
def test_valid_inputs_work_many(case, data):
    check_valid_call(case, data)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
@SLOW
@given(data=st.data())
def test_invalid_inputs_raise_documented_errors_many(case, data):
    check_invalid_call(case, data)
