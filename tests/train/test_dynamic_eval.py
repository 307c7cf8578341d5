"""Dynamic evaluation (Krause et al. 2018): ``statewise eval --dynamic``."""

from __future__ import annotations

import json
import random

import pytest
import torch

from statewise import cli
from statewise.train import checkpoint
from statewise.train.dynamic_eval import dynamic_evaluate
from tests.run_dirs import file_bytes


@pytest.fixture
def run_with_repeated_validation(tmp_path, tiny_text):
    """A run trained on ordinary text whose validation part (the last 10% of the file) is
    one passage of random letters, never seen in training, repeated 10 times."""
    rng = random.Random(0)
    passage = "".join(rng.choice("abcdefghij ") for _ in range(200))
    train_text = tiny_text.read_text()[:18_000]
    (tmp_path / "text.txt").write_text(train_text + passage * 10)
    (tmp_path / "c.toml").write_text(
        '[model]\nlayer = "lstm"\nd_model = 32\nn_layers = 1\nmlp_ratio = 2.0\n'
        f'[data]\npath = "{tmp_path / "text.txt"}"\nseq_len = 32\n'
        "[train]\nsteps = 60\nbatch_size = 8\nwarmup_steps = 5\neval_batches = 2\n"
        "eval_every = 60\n"
    )
    out = tmp_path / "run"
    assert cli.main(["train", str(tmp_path / "c.toml"), "--out", str(out), "--no-progress"]) == 0
    return out


def test_dynamic_eval_learns_a_repeated_passage_and_changes_nothing(
    run_with_repeated_validation, capsys
):
    out = run_with_repeated_validation
    before = file_bytes(out)
    capsys.readouterr()
    args = ["eval", "--checkpoint", str(out), "--dynamic", "--json"]
    assert cli.main(args) == 0
    result = json.loads(capsys.readouterr().out)["dynamic"]
    assert result["tokens"] == 8 * (2000 // 8 - 1)  # 8 rows of 250 tokens, 249 targets each
    assert result["lr"] == 0.05 and result["decay"] == 0.002 and result["window"] == 32
    # 8 rows: each reads the passage 1.25 times; measured static 4.01, dynamic 3.62
    assert result["dynamic_loss"] < result["static_loss"] - 0.2
    assert cli.main([*args, "--dynamic-rows=1"]) == 0  # one row: the passage 10 times
    one_row = json.loads(capsys.readouterr().out)["dynamic"]
    assert one_row["dynamic_loss"] < one_row["static_loss"] - 1.0  # measured 4.01 -> 2.76
    assert file_bytes(out) == before  # the run directory, byte for byte
    # and the plain line names both losses
    assert cli.main(["eval", "--checkpoint", str(out), "--dynamic", "--dynamic-rows=2"]) == 0
    line = capsys.readouterr().out
    assert "static loss" in line and "dynamic loss" in line
    assert file_bytes(out) == before


def test_without_adaptation_dynamic_equals_static_and_weights_come_back(
    run_with_repeated_validation,
):
    """lr 0 and decay 0: the two passes read the same windows with the same state carried,
    so the numbers are equal (to float32 rounding: the adapting pass runs its forwards with
    gradients on, another kernel path; measured 1.2e-8 relative); after an adapting pass
    the model's weights are its own again."""
    model = checkpoint.load(run_with_repeated_validation)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stream = torch.randint(0, 256, (1000,))
    same = dynamic_evaluate(model, stream, window=16, rows=4, lr=0.0, decay=0.0)
    assert same["dynamic_loss"] == pytest.approx(same["static_loss"], rel=1e-6)
    moved = dynamic_evaluate(model, stream, window=16, rows=4, lr=0.5, decay=0.0)
    assert moved["dynamic_loss"] != moved["static_loss"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_bad_dynamic_options_are_clear(run_with_repeated_validation, capsys):
    out = str(run_with_repeated_validation)
    assert cli.main(["eval", "--checkpoint", out, "--dynamic", "--dynamic-window=0"]) == 2
    assert "--dynamic-window must be >= 1" in capsys.readouterr().err
    assert cli.main(["eval", "--checkpoint", out, "--dynamic", "--dynamic-decay=2"]) == 2
    assert "--dynamic-decay in [0, 1]" in capsys.readouterr().err
