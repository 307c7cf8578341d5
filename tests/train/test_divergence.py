"""A run that diverges stops with one line naming the step and the value, and keeps its
last good checkpoint; in the arena a diverged learning rate is recorded and the cell goes on."""

from __future__ import annotations

import json

import pytest

from statewise.arena import run_arena
from statewise.arena import suites as arena_suites
from statewise.arena.suites import Suite, TaskSpec
from statewise.cli import main
from statewise.train import checkpoint, objectives


def test_train_keeps_its_last_checkpoint_when_the_loss_turns_nan(
    tmp_path, tiny_config, monkeypatch, capsys
):
    plain_loss, calls = objectives.token_loss, []

    def nan_at_step_7(logits, targets, smoothing=0.0):
        calls.append(1)
        loss = plain_loss(logits, targets, smoothing)
        return loss * float("nan") if len(calls) == 7 else loss

    monkeypatch.setattr(objectives, "token_loss", nan_at_step_7)
    out = tmp_path / "run"
    argv = ["train", str(tiny_config(steps=20, checkpoint_every=5)), "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "statewise: error: training diverged at step 7: the loss is nan (try a lower "
        "learning rate or gradient clipping)"
    ]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000005"]
    checkpoint.verify(out / "checkpoints" / "step-00000005")
    assert checkpoint.load_train_state(out)["step"] == 5


def test_train_with_a_learning_rate_forced_to_diverge(tmp_path, tiny_config, capsys):
    out = tmp_path / "run"
    config = str(tiny_config(steps=20, checkpoint_every=5))
    argv = ["train", config, "--out", str(out), "--no-progress", "--train.lr=1e30"]
    argv += ["--train.grad_clip=0"]
    assert main(argv) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training diverged at step" in err[0]
    step = int(err[0].split("at step ")[1].split(":")[0])
    assert 1 <= step <= 5, err  # an lr of 1e30 overflows the weights at the first step
    assert not checkpoint.is_checkpoint(out)


@pytest.fixture
def diverging_suite(monkeypatch) -> Suite:
    monkeypatch.setitem(
        arena_suites.TASK_SPECS,
        "mqar",
        TaskSpec("mqar", {"task": "mqar", "seq_len": 16, "vocab_size": 16, "n_pairs": 2}),
    )
    return Suite(
        "diverging",
        ("mingru", "gru"),
        ("mqar",),
        params=3_000,
        budget_s=2.0,
        # mingru: every lr diverges; gru: one does, the other trains
        lrs={"default": (1e30,), "nonlinear": (1e-3, 1e30)},
        batch_size=8,
        eval_batches=1,
    )


def test_the_arena_records_diverged_learning_rates_and_goes_on(tmp_path, diverging_suite):
    out = tmp_path / "arena"
    lines: list[str] = []
    report = run_arena(diverging_suite, out, steps=5, d_model=8, log=lines.append)
    cells = {c["layer"]: c for c in report["cells"]}
    gru, mingru = cells["gru"], cells["mingru"]
    assert gru["lr"] == 1e-3 and gru["value"] is not None and "diverged" not in gru
    assert [("diverged" in r) for r in gru["sweep"]] == [False, True]
    diverged = gru["sweep"][1]["diverged"]
    assert diverged["step"] >= 1
    assert diverged["what"] in ("the loss", "the gradient norm", "a weight", "an activation")
    assert mingru["value"] is None and mingru["diverged"].startswith("diverged: lr 1e+30 at step")
    stored = json.loads((out / "cells" / "mqar__mingru__seed0.json").read_text())
    assert stored["diverged"] == mingru["diverged"]
    board = (out / "leaderboard.md").read_text()
    assert "| 1 | gru |" in board and "| 2 | mingru | diverged: lr 1e+30 at step" in board
    assert any("mingru" in line and "stored, not retried" in line for line in lines)
    again: list[str] = []
    run_arena(diverging_suite, out, steps=5, d_model=8, log=again.append)
    assert sum("done before, skipped" in line for line in again) == 2  # not retried


@pytest.mark.parametrize("where", ["_plan_steps", "evaluate"])
def test_an_overflow_outside_the_training_steps_is_a_diverged_learning_rate(
    tmp_path, diverging_suite, monkeypatch, where
):
    """A model whose activations overflow in the planning forward (before any step) or
    in validation (after training) raises NonFiniteError there, as the layers refuse a
    non-finite output: the learning rate is recorded as diverged and the run goes on."""
    from statewise.arena import runner
    from statewise.errors import NonFiniteError

    def overflow(*args, **kwargs):
        raise NonFiniteError("x: values too large for this layer: the output overflowed")

    monkeypatch.setattr(runner, where, overflow)
    suite = Suite(
        "overflowing",
        ("gru",),
        ("mqar",),
        params=3_000,
        budget_s=2.0,
        lrs={"default": (1e-3,)},
        batch_size=8,
        eval_batches=1,
    )
    steps = None if where == "_plan_steps" else 5
    report = run_arena(suite, tmp_path / "arena", steps=steps, d_model=8, log=lambda line: None)
    (cell,) = report["cells"]
    assert cell["value"] is None and cell["diverged"].startswith("diverged: lr 0.001 at step")
    (run,) = cell["sweep"]
    assert run["diverged"]["what"] == "an activation"
    assert run["steps"] == (0 if where == "_plan_steps" else 5)
