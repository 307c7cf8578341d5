"""Parameter matching and state sizes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from statewise.arena.budget import count_params, match_d_model, model_state_floats, width_step
from statewise.models import ModelConfig, build_model


@pytest.mark.parametrize(
    "layer, step", [("mingru", 8), ("retnet", 8), ("mamba", 8), ("attention", 8), ("mlstm", 8)]
)
@pytest.mark.parametrize("budget", [5_000, 40_000])
def test_match_d_model_is_the_closest_width(layer, step, budget):
    config = ModelConfig(layer=layer, n_layers=2, vocab_size=32)
    assert width_step(config) == step
    d, params = match_d_model(config, budget)
    assert d % step == 0 and params == count_params(build_model(replace(config, d_model=d)))
    for other in (d - step, d + step):
        if other > 0:
            p = count_params(build_model(replace(config, d_model=other)))
            assert abs(p - budget) >= abs(params - budget), (other, p)


def test_width_step_follows_n_heads():
    assert width_step(ModelConfig(layer="retnet", layer_kwargs={"n_heads": 6})) == 24


def test_bad_budget():
    with pytest.raises(ValueError, match="positive"):
        match_d_model(ModelConfig(layer="mingru"), 0)


def test_state_floats():
    config = ModelConfig(layer="lstm", d_model=16, n_layers=2, vocab_size=8)
    assert model_state_floats(config, 64) == 2 * 2 * 16  # (h, c) per block
    # attention's state is its key-value cache at the task's length: 2 (k, v) x T x d
    attn = replace(config, layer="attention")
    assert model_state_floats(attn, 64) == 2 * 2 * 64 * 16
