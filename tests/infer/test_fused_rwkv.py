"""The fused RWKV-6 step (statewise.infer.fused.rwkv) against RWKV6.step, its twin, over the
options that change the step: head count, channel mixing on or off, the channel mix's
width and the two LoRA ranks; and its batch invariance."""

from __future__ import annotations

import pytest
import torch

from tests.infer.fused_check import check_against_step, check_batch_invariant

OPTIONS = [
    {},  # one head of 32, channel mixing
    {"n_heads": 4},
    {"n_heads": 2, "channel_mix": False},
    {"n_heads": 8, "ffn_ratio": 1.5, "mix_lora_rank": 3, "decay_lora_rank": 5},
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_rwkv_equals_step(options, dtype):
    check_against_step("rwkv", dtype, layer_kwargs={"rwkv": options})


def test_rwkv_without_block_mlp_equals_step():
    """RWKV's own layout: the channel mix in the mixer, no block MLP, LayerNorm blocks."""
    check_against_step("rwkv", torch.float32, mlp_ratio=0.0, norm="layernorm")


@pytest.mark.parametrize("options", [{"n_heads": 4}, {"n_heads": 2, "channel_mix": False}], ids=str)
def test_rwkv_batch_invariant(options):
    check_batch_invariant("rwkv", layer_kwargs={"rwkv": options})
