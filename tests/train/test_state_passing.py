"""train.state_passing: each step starts from the previous batch's final state, detached;
resuming stays exact; layers whose state grows are refused."""

from __future__ import annotations

import pytest
import torch

from statewise.ops.tree import tree_leaves
from statewise.train import checkpoint
from statewise.train.config import load_config
from statewise.train.trainer import train


def _config(path, **train):
    config = load_config(path)
    for key, value in {"state_passing": True, **train}.items():
        setattr(config.train, key, value)
    return config


@pytest.fixture
def training_calls(monkeypatch) -> list[tuple]:
    """(state given, final state returned) of every training forward, in order."""
    from statewise.models.heads import LanguageModel

    calls = []
    forward = LanguageModel.forward

    def recording(self, ids, state=None, mask=None, return_state=False, resets=None):
        out = forward(self, ids, state=state, mask=mask, return_state=return_state, resets=resets)
        if self.training:
            calls.append((state, out[1] if return_state else None))
        return out

    monkeypatch.setattr(LanguageModel, "forward", recording)
    return calls


def test_each_step_starts_from_the_last_final_state(tiny_config, tmp_path, training_calls):
    calls = training_calls
    train(_config(tiny_config(steps=3)), tmp_path / "run", progress=False)
    assert len(calls) == 3 and calls[0][0] is None
    for (_, final), (given, _) in zip(calls, calls[1:]):
        assert final is not None and given is not None
        for a, b in zip(tree_leaves(final), tree_leaves(given), strict=True):
            assert not b.requires_grad
            assert torch.equal(a.detach(), b) and a.abs().sum() > 0


def test_resume_with_state_passing_is_exact(tiny_config, tmp_path, monkeypatch):
    from statewise.train import trainer

    config = tiny_config(steps=8)
    whole = train(_config(config), tmp_path / "whole", progress=False)

    build = trainer.build_task

    def interrupted_at_step_5(data, seed):  # Ctrl-C while step 5's batch is drawn
        task = build(data, seed)
        draw = task.stream_batch  # state passing reads consecutive windows

        def stream_batch(step, batch_size):
            if step == 5:
                raise KeyboardInterrupt
            return draw(step, batch_size)

        task.stream_batch = stream_batch
        return task

    monkeypatch.setattr(trainer, "build_task", interrupted_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(_config(config), tmp_path / "split", progress=False)
    stopped = checkpoint.load_train_state(tmp_path / "split")
    assert stopped["step"] == 5 and stopped["carried"] is not None
    monkeypatch.setattr(trainer, "build_task", build)
    rest = train(_config(config), tmp_path / "split", resume=True, progress=False)
    assert rest["loss"] == whole["loss"] and rest["val_loss"] == whole["val_loss"]


def test_global_attention_is_refused_local_attention_runs(tiny_config, tmp_path):
    with pytest.raises(ValueError, match="fixed size"):
        train(_config(tiny_config(layer="attention")), tmp_path / "global", progress=False)
    assert not (tmp_path / "global").exists()
    local = _config(tiny_config(layer="attention", steps=4))
    local.model.layer_kwargs = {"window": 8}  # a fixed-size cache of 7 tokens
    assert train(local, tmp_path / "local", progress=False)["step"] == 4


def test_state_reset_one_starts_every_step_fresh(tiny_config, tmp_path, monkeypatch):
    """state_reset = 1: every row starts from the initial state, as without state passing
    (on the same batches: state passing reads consecutive windows, so the run without it
    is given those windows too)."""
    from statewise.train import trainer

    build = trainer.build_task

    def streaming(data, seed):
        task = build(data, seed)
        task.train_batch = task.stream_batch
        return task

    path = tiny_config(steps=6)
    monkeypatch.setattr(trainer, "build_task", streaming)
    fresh = train(load_config(path), tmp_path / "fresh", progress=False)
    monkeypatch.setattr(trainer, "build_task", build)
    reset = train(_config(path, state_reset=1.0), tmp_path / "reset", progress=False)
    carried = train(_config(path), tmp_path / "carried", progress=False)
    assert reset["loss"] == fresh["loss"] and reset["val_loss"] == fresh["val_loss"]
    assert carried["loss"] != fresh["loss"]  # passing the state does change the run


def test_state_reset_starts_some_rows_fresh(tiny_config, tmp_path, training_calls):
    config = _config(tiny_config(steps=6), state_reset=0.5)
    train(config, tmp_path / "run", progress=False)
    fresh_rows = carried_rows = 0
    for (_, final), (given, _) in zip(training_calls, training_calls[1:]):
        final_leaf, given_leaf = tree_leaves(final)[0].detach(), tree_leaves(given)[0]
        for row in range(given_leaf.shape[0]):
            if torch.equal(given_leaf[row], final_leaf[row]):
                carried_rows += 1
            else:
                assert given_leaf[row].abs().sum() == 0  # the initial state (zeros for mingru)
                fresh_rows += 1
    assert fresh_rows > 0 and carried_rows > 0


def test_state_reset_outside_zero_one_is_refused(tiny_config):
    from statewise.train.config import ConfigError

    with pytest.raises(ConfigError, match="state_reset"):
        load_config(tiny_config(), ["train.state_reset=1.5"])
