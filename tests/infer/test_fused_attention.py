"""The fused decode step of softmax attention (statewise.infer.fused.attention) against its
``step``: local windows that have wrapped, fill up during the steps, or hold nothing (window
1), global caches, multi-query / grouped-query heads, rotary fractions 1, 0.5, 0 and odd
widths, biases; rows at different fill levels; the full global cache's error; and Griffin's
rglru / attention pattern as the RecurrentGemma converter builds it.

check_against_step warms the state with a 5-token prompt and takes 6 steps, so window 3
(2 slots) has wrapped before the first step and window 8 (7 slots) fills during them."""

from __future__ import annotations

import pytest
import torch

from statewise.errors import ArgumentError
from statewise.infer.fused import FusedDecoder, why_not_fusable
from statewise.ops.tree import tree_leaves, tree_map
from tests.infer.fused_check import (
    TOLERANCE,
    VOCAB,
    check_against_step,
    check_batch_invariant,
    make_model,
    relative_error,
)

OPTIONS = [
    {},  # global, 4 heads of 8, full rotary
    {"window": 3},  # wrapped before the first step
    {"window": 8, "n_kv_heads": 2},  # fills up during the steps
    {"window": 1},  # no cache slot: each token attends to itself
    {  # RecurrentGemma's: multi-query, half the features rotated, o_proj bias
        "window": 4,
        "n_kv_heads": 1,
        "rotary_fraction": 0.5,
        "qkv_bias": True,
        "out_bias": True,
    },
    {"n_kv_heads": 2, "rotary_fraction": 0.0, "max_len": 11},  # global, full at the last step
    {  # 3 rotated features: 2 pairs; a head width with a tail past the dot product's lanes
        "n_heads": 2,
        "head_dim": 12,
        "rotary_fraction": 0.3,
        "window": 5,
        "qkv_bias": True,
    },
    {"n_heads": 3, "head_dim": 20, "rope_theta": 500.0, "out_bias": True, "max_len": 64},
]

GRIFFIN = {  # the model statewise.convert.hf_recurrentgemma builds (layer "rglru"), small
    "layers": ["rglru", "rglru", "attention"],
    "n_layers": 3,
    "mlp": "geglu",
    "mlp_ratio": 3.0,
    "norm": "rmsnorm_plus_one",
    "embed_scale": 5.0,
    "logit_softcap": 30.0,
    "layer_kwargs": {
        "rglru": {"n_heads": 4},
        "attention": {
            "n_heads": 4,
            "n_kv_heads": 1,
            "window": 3,
            "rotary_fraction": 0.5,
            "out_bias": True,
        },
    },
}


def _attention(**options) -> dict:
    return {"layer_kwargs": {"attention": options}}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_equals_step(options, dtype):
    check_against_step("attention", dtype, **_attention(**options))


@pytest.mark.parametrize("options", [OPTIONS[0], OPTIONS[1], OPTIONS[4], OPTIONS[6]], ids=str)
def test_batch_invariant(options):
    check_batch_invariant("attention", **_attention(**options))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_griffin_pattern_equals_step(dtype):
    check_against_step("rglru", dtype, **GRIFFIN)


def test_griffin_pattern_batch_invariant():
    """The whole RecurrentGemma-shaped model is fusable, and batch-invariant."""
    assert why_not_fusable(make_model("rglru", torch.float32, **GRIFFIN)) is None
    check_batch_invariant("rglru", **GRIFFIN)


def _ragged_state(model, rows: int):
    """The state after a left-padded prompt: row r has seen r + 1 tokens (so rows differ in
    how many cache slots they fill, and the layer masks the others' slots)."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (rows, rows), generator=g)
    mask = torch.arange(rows)[None, :] >= (rows - 1 - torch.arange(rows))[:, None]
    with torch.no_grad():
        _, state = model(ids, mask=mask, return_state=True)
    return state


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("options", [{"window": 4, "n_kv_heads": 2}, {"max_len": 16}], ids=str)
def test_rows_at_different_fill_levels(options, dtype):
    """Rows of 1 to 6 tokens against the layer's step, and each row alone against the batch
    (bit-identical in float32)."""
    model = make_model("attention", dtype, **_attention(**options))
    fused = FusedDecoder(model)
    state = _ragged_state(model, 6)
    assert state[0]["pos"].tolist() == [1, 2, 3, 4, 5, 6]
    fused_state = tree_map(lambda t: t.clone(), state)
    alone_state = tree_map(lambda t: t[1:2].clone(), state)
    ids = torch.tensor([0, 7, 33, 63, 5, 11])
    worst = 0.0
    with torch.no_grad():
        for _ in range(5):
            logits, state = model.step(ids, state)
            fused_logits, fused_state = fused.step(ids, fused_state)
            alone, alone_state = fused.step(ids[1:2], alone_state)
            worst = max(worst, relative_error(fused_logits, logits))
            for ours, ref, one in zip(
                tree_leaves(fused_state), tree_leaves(state), tree_leaves(alone_state)
            ):
                worst = max(worst, relative_error(ours, ref))
                if dtype == torch.float32:
                    assert torch.equal(one[0], ours[1])
            if dtype == torch.float32:
                assert torch.equal(alone[0], fused_logits[1])
            ids = logits.argmax(-1)
    assert worst <= TOLERANCE[dtype], f"{worst:.2e}"


def test_full_global_cache_raises_as_the_layer():
    """max_len 6 after a 5-token prompt: one step fills the cache, the next one raises in
    both (and the fused step leaves the state alone)."""
    model = make_model("attention", torch.float32, **_attention(max_len=6))
    fused = FusedDecoder(model)
    ids = torch.tensor([1, 2])
    with torch.no_grad():
        _, warm = model(torch.randint(0, VOCAB, (2, 5)), return_state=True)
        _, state = model.step(ids, warm)
        _, fused_state = fused.step(ids, warm)
        assert int(fused_state[0]["pos"].max()) == 6
        with pytest.raises(ArgumentError, match="max_len=6"):
            model.step(ids, state)
        before = tree_map(lambda t: t.clone(), fused_state)
        with pytest.raises(ArgumentError, match="max_len=6"):
            fused.step(ids, fused_state, in_place=True)
        assert all(torch.equal(a, b) for a, b in zip(tree_leaves(fused_state), tree_leaves(before)))
