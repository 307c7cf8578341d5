"""train.dtype = "bfloat16": the forward and loss under autocast, everything else float32.
The run's losses stay close to float32's (the same batches and initial weights), the
carried states and the weights it saves are float32, and lstm, whose state under autocast
used to come back as bfloat16 and be refused by its own next forward, trains with state
passing."""

from __future__ import annotations

import pytest
import torch

from statewise.ops.tree import tree_leaves
from statewise.train import checkpoint
from statewise.train.config import load_config
from statewise.train.trainer import train


@pytest.mark.parametrize("layer", ["lstm", "mingru", "retnet"])
def test_bfloat16_run_tracks_float32(tiny_config, tmp_path, layer):
    path = tiny_config(layer=layer, steps=6, checkpoint_every=6)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        config = load_config(path, [f"train.dtype={dtype}", "train.state_passing=true"])
        runs[dtype] = train(config, tmp_path / dtype, progress=False)
    # bfloat16 rounds the projections to 2^-9 relative, but the loss of a near-uniform
    # model barely feels it: over 6 steps the training losses differed by at most 2.2e-5
    # relative (mingru); 1e-3 leaves room for other machines and still catches a loss
    # that is wrong (a mis-weighted or bfloat16-accumulated loss is off by far more)
    assert runs["bfloat16"]["loss"] == pytest.approx(runs["float32"]["loss"], rel=1e-3)
    assert runs["bfloat16"]["loss"] != runs["float32"]["loss"]  # autocast did run
    state = checkpoint.load_train_state(tmp_path / "bfloat16")
    floats = [t for t in tree_leaves(state["carried"]) if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float32 for t in floats)  # (retnet: + a counter)
    weights = checkpoint.load(tmp_path / "bfloat16").state_dict().values()
    assert all(w.dtype == torch.float32 for w in weights if w.is_floating_point())


def test_unknown_dtype_is_a_config_error(tiny_config):
    with pytest.raises(ValueError, match="train.dtype must be one of"):
        load_config(tiny_config(), ["train.dtype=float16"])
