"""The fused decode step of the RG-LRU block (statewise.infer.fused.rglru) against its
``step``: head counts, lru_width != d_model, conv widths (1 = no window), negative
eigenvalues, and rows at a document start (pos == 0) next to rows in mid-document."""

from __future__ import annotations

import pytest
import torch

from statewise.infer.fused import FusedDecoder
from statewise.ops.tree import tree_leaves, tree_map
from tests.infer.fused_check import (
    TOLERANCE,
    _warm_state,
    check_against_step,
    check_batch_invariant,
    make_model,
    relative_error,
)

OPTIONS = [
    {},
    {"n_heads": 1},
    {"lru_width": 48, "n_heads": 3},
    {"conv_width": 2},
    {"negative_eigenvalues": True},
]


def _check_rows(dtype: torch.dtype, starts: bool, **options) -> None:
    """check_against_step's comparison, for what it does not cover: rows 1 and 3 at a
    document start (``starts``: pos 0 with the warm h and conv window left over), and
    conv_width 1, whose empty conv window relative_error cannot take."""
    model = make_model("rglru", dtype, layer_kwargs={"rglru": options})
    fused = FusedDecoder(model)
    state = _warm_state(model, 4)
    if starts:
        for layer_state in state:
            layer_state["pos"][1::2] = 0
    fused_state = tree_map(lambda t: t.clone(), state)
    ids = torch.tensor([0, 7, 33, 63])
    worst = 0.0
    with torch.no_grad():
        for _ in range(4):
            logits, state = model.step(ids, state)
            fused_logits, fused_state = fused.step(ids, fused_state)
            worst = max(worst, relative_error(fused_logits, logits))
            for ours, ref in zip(tree_leaves(fused_state), tree_leaves(state)):
                assert ours.shape == ref.shape and ours.dtype == ref.dtype
                if not ref.is_floating_point():
                    assert torch.equal(ours, ref)  # pos
                elif ref.numel():
                    worst = max(worst, relative_error(ours, ref))
            ids = logits.argmax(-1)
    assert worst <= TOLERANCE[dtype], f"{worst:.2e}"


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_equals_step_float64(options):
    check_against_step("rglru", torch.float64, layer_kwargs={"rglru": options})


@pytest.mark.parametrize("options", [{}, {"lru_width": 48, "negative_eigenvalues": True}], ids=str)
def test_equals_step_float32(options):
    check_against_step("rglru", torch.float32, layer_kwargs={"rglru": options})


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_no_conv_window_equals_step(dtype):
    _check_rows(dtype, starts=False, conv_width=1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("negative_eigenvalues", [False, True])
def test_document_start_equals_step(dtype, negative_eigenvalues):
    _check_rows(dtype, starts=True, negative_eigenvalues=negative_eigenvalues)


@pytest.mark.parametrize("options", [{}, {"conv_width": 1, "negative_eigenvalues": True}], ids=str)
def test_batch_invariant(options):
    check_batch_invariant("rglru", layer_kwargs={"rglru": options})
