"""train.state_noise: each step starts from the initial state plus Gaussian noise, drawn
from (seed, step) alone; bad values and the combination with state passing are refused."""

from __future__ import annotations

import pytest
import torch

from statewise.models import build_model
from statewise.ops.tree import tree_leaves
from statewise.train.config import ConfigError, load_config
from statewise.train.trainer import noisy_state, train


def _config(path, **train):
    config = load_config(path)
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


def test_noise_has_the_asked_spread_and_is_drawn_from_seed_and_step(tiny_config):
    config = _config(tiny_config(layer="mamba"), state_noise=2.0)
    model = build_model(config.model)
    first = tree_leaves(noisy_state(model, 64, config.train, step=3))
    again = tree_leaves(noisy_state(model, 64, config.train, step=3))
    other = tree_leaves(noisy_state(model, 64, config.train, step=4))
    zeros = tree_leaves(model.init_state(64))
    assert len(first) == len(zeros) > 0
    for a, b, c, z in zip(first, again, other, zeros, strict=True):
        assert a.shape == z.shape and torch.equal(a, b) and not torch.equal(a, c)
        # thousands of N(0, 4) draws per leaf: the sample std is 2 within a few percent
        assert a.numel() > 1000 and abs((a - z).std().item() - 2.0) < 0.1


def test_training_steps_start_from_the_noisy_state(tiny_config, tmp_path, monkeypatch):
    from statewise.models.heads import LanguageModel

    given = []
    forward = LanguageModel.forward

    def recording(self, ids, state=None, mask=None, return_state=False, resets=None):
        if self.training:
            given.append(state)
        return forward(self, ids, state=state, mask=mask, return_state=return_state, resets=resets)

    monkeypatch.setattr(LanguageModel, "forward", recording)
    config = _config(tiny_config(steps=3), state_noise=0.5)
    noisy = train(config, tmp_path / "noisy", progress=False)
    assert len(given) == 3
    model = build_model(config.model)
    for step, state in enumerate(given):
        want = tree_leaves(noisy_state(model, config.train.batch_size, config.train, step))
        for got, w in zip(tree_leaves(state), want, strict=True):
            assert torch.equal(got, w)
    plain = train(_config(tiny_config(steps=3)), tmp_path / "plain", progress=False)
    assert noisy["loss"] != plain["loss"]  # the noise does change the run


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["train.state_noise=-1"], "state_noise must be >= 0"),
        (["train.state_noise=1", "train.state_passing=true"], "cannot both be on"),
    ],
)
def test_bad_state_noise_is_refused(tiny_config, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(tiny_config(), overrides)


def test_global_attention_is_refused(tiny_config, tmp_path):
    config = _config(tiny_config(layer="attention"), state_noise=1.0)
    with pytest.raises(ValueError, match="fixed size"):
        train(config, tmp_path / "run", progress=False)
