"""The paths a user walks: list the models, train an example, evaluate it, generate from it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import statewise
from statewise.cli import main
from statewise.train.config import load_config
from tests import run_dirs
from tests.conftest import ROOT

EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


def statewise_cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "statewise", *argv], capture_output=True, text=True, cwd=cwd
    )


def test_models_lists_every_registered_layer(capsys):
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    for name in statewise.layers.names():
        assert f"\n{name} " in table
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == statewise.layers.names()
    retnet = next(r for r in rows if r["name"] == "retnet")
    assert retnet["modes"] == ["recurrent", "parallel", "chunk"]
    assert retnet["family"] and retnet["paper"] and retnet["state_size"]


def test_examples_are_valid_configs():
    assert any("char" in p.name for p in EXAMPLES)
    for path in EXAMPLES:
        load_config(path)


def test_train_eval_generate_from_the_char_example(tmp_path):
    example = next(p for p in EXAMPLES if p.name == "char_lm.toml")
    out = tmp_path / "run"
    done = statewise_cli(
        "train",
        str(example),
        "--out",
        str(out),
        "--train.steps=30",
        "--train.eval_every=15",
        "--train.checkpoint_every=15",
    )
    assert done.returncode == 0, done.stderr
    # stderr is a pipe, not a terminal: one progress line per train.log_every (10) steps
    assert "step 30/30  loss " in done.stderr and "\r" not in done.stderr
    metrics = run_dirs.metrics(out)
    assert metrics[-1]["step"] == 30 and all("loss" in m and "step" in m for m in metrics)
    assert metrics[-1]["loss"] < metrics[0]["loss"]

    evaluated = statewise_cli("eval", "--checkpoint", str(out), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["step"] == 30 and result["val_loss"] == pytest.approx(metrics[-1]["val_loss"])

    streamed = statewise_cli(
        "generate",
        "--checkpoint",
        str(out),
        "--prompt",
        "def ",
        "--max-new-tokens",
        "40",
        "--seed",
        "3",
        "--stream",
    )
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.startswith("def ") and len(streamed.stdout) > 10
    whole = statewise_cli(
        "generate",
        "--checkpoint",
        str(out),
        "--prompt",
        "def ",
        "--max-new-tokens",
        "40",
        "--seed",
        "3",
    )
    assert whole.stdout == streamed.stdout  # same seed, same text, streamed or not


def test_generate_refuses_a_checkpoint_not_trained_on_text(tmp_path, capsys):
    example = ROOT / "examples" / "mqar.toml"
    out = tmp_path / "mqar"
    assert (
        main(
            [
                "train",
                str(example),
                "--out",
                str(out),
                "--train.steps=2",
                "--train.checkpoint_every=1",
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(out), "--prompt", "hello"]) == 2
    assert "not on text" in capsys.readouterr().err


@pytest.mark.slow
def test_the_readme_main_job_runs_the_quick_arena(tmp_path):
    """The README's main job, `statewise arena --suite quick` (about 5 minutes here): six
    layers on three tasks, a ranked table per task, and the files it promises."""
    done = statewise_cli("arena", "--suite", "quick", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "runs" / "arena-quick"
    board = json.loads((out / "leaderboard.json").read_text())
    cells = {(c["task"], c["layer"]) for c in board["cells"]}
    layers = {"lstm", "mingru", "mamba", "retnet", "mlstm", "attention"}
    assert cells == {(t, lay) for t in ("mqar", "parity", "char_lm") for lay in layers}
    for name in ("leaderboard.md", "index.html", "mqar_state.png", "loss_curves.png"):
        assert (out / name).stat().st_size > 0
    assert "## char_lm" in done.stdout


@pytest.mark.slow
def test_the_char_example_trains_and_generates(tmp_path):
    """The full char example (about a minute here): its model learns the corpus."""
    done = statewise_cli(
        "train", str(ROOT / "examples" / "char_lm.toml"), "--no-progress", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    final = run_dirs.metrics(tmp_path / "runs/char_lm")[-1]
    assert final["val_bits_per_char"] < 2.6  # a uniform guess over bytes is 8 bits
    text = statewise_cli(
        "generate", "--checkpoint", "runs/char_lm", "--prompt", "def ", cwd=tmp_path
    )
    assert text.returncode == 0 and len(text.stdout) > 100
