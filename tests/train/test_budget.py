"""train.budget_s stops a run once its training time (summed over resumes) is used up."""

from __future__ import annotations

import pytest
import torch

from statewise.train import checkpoint
from statewise.train.config import ConfigError, load_config
from statewise.train.trainer import train
from tests.run_dirs import newest


def test_budget_stops_the_run_and_saves_it(tmp_path, tiny_config):
    config = load_config(tiny_config(steps=10_000), ["train.budget_s=0.5"])
    out = tmp_path / "run"
    last = train(config, out, progress=False)
    state = torch.load(newest(out) / "train_state.pt", weights_only=True)
    assert 0 < state["step"] < 10_000, "a 0.5 s budget cannot fit 10,000 steps"
    assert state["seconds"] >= 0.5
    assert last["step"] == state["step"] and "val_loss" in last  # evaluated where it stopped
    assert checkpoint.load_metrics(out)[-1]["step"] == state["step"]


def test_resume_continues_within_the_budget_that_is_left(tmp_path, tiny_config):
    out = tmp_path / "run"
    first = load_config(tiny_config(steps=10_000), ["train.budget_s=0.3"])
    train(first, out, progress=False)
    step_1 = torch.load(newest(out) / "train_state.pt", weights_only=True)["step"]

    # the same budget is already used up: resuming trains nothing more
    train(first, out, resume=True, progress=False)
    assert torch.load(newest(out) / "train_state.pt", weights_only=True)["step"] == step_1

    # a larger budget continues from where the run stopped
    more = load_config(tiny_config(steps=10_000), ["train.budget_s=0.8"])
    train(more, out, resume=True, progress=False)
    state = torch.load(newest(out) / "train_state.pt", weights_only=True)
    assert step_1 < state["step"] < 10_000 and state["seconds"] >= 0.8


def test_no_budget_runs_every_step(tmp_path, tiny_config):
    out = tmp_path / "run"
    train(load_config(tiny_config(steps=12)), out, progress=False)
    assert torch.load(newest(out) / "train_state.pt", weights_only=True)["step"] == 12


def test_negative_budget_is_refused(tiny_config):
    with pytest.raises(ConfigError, match="budget_s"):
        load_config(tiny_config(), ["train.budget_s=-1"])
