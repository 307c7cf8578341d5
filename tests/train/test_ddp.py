"""``torchrun --standalone --nproc_per_node 2 -m statewise train``: two processes on this
machine (gloo), each training on its half of the rows of every batch.

- The final loss equals a single process's with the same global batch within 1e-4
  relative: the gradient is mathematically the same (each rank's loss is weighted by its
  share of the batch's tokens, DDP averages), and only the order of floating-point sums
  differs (the gradient's all-reduce adds two halves): after 12 steps of SGD the losses
  differed by 7e-8 relative here (the validation losses not at all).
- ``--resume auto`` under torchrun is exact: a run resumed from its step-6 checkpoint ends
  with the weights and losses, bit for bit, of the same 2-process run never stopped,
  carried states of both ranks' rows included (state passing is on).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from statewise.train import checkpoint
from tests.run_dirs import metrics

STEPS = 12


def run(config: Path, out: Path, processes: int, *extra: str) -> str:
    """Train; returns what the processes printed on stdout."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launcher += [f"--nproc_per_node={processes}"] if processes > 1 else []
    command = (
        [*launcher, "-m", "statewise"] if processes > 1 else [sys.executable, "-m", "statewise"]
    )
    command += ["train", str(config), "--out", str(out), "--no-progress", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture
def config(tiny_config) -> Path:
    path = tiny_config(layer="mingru", steps=STEPS, checkpoint_every=6)
    # SGD without clipping (NT-ASGD before its trigger): the update is proportional to the
    # gradient, so a wrongly weighted loss on either rank would show (Adam would hide it)
    sgd = 'optimizer = "nt_asgd"\nlr = 0.5\ngrad_clip = 0.0\nweight_decay = 0.0\n'
    text = path.read_text().replace("[train]\n", "[train]\nstate_passing = true\n" + sgd)
    path.write_text(text.replace("batch_size = 4", "batch_size = 8"))
    return path


def losses(out: Path) -> list[tuple]:
    return [(m["step"], m["loss"], m.get("val_loss")) for m in metrics(out)]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(out).state_dict()


def test_two_processes_match_one_and_resume_exactly(tmp_path, config):
    two, one = tmp_path / "two", tmp_path / "one"
    printed = run(config, two, 2)
    run(config, one, 1)
    # one logger: rank 0 prints the evaluation and the summary, rank 1 nothing
    lines = printed.splitlines()
    assert sum(line.startswith(f"step {STEPS}: loss") for line in lines) == 1
    assert sum(line.startswith("trained ") for line in lines) == 1
    final_two, final_one = metrics(two)[-1], metrics(one)[-1]
    assert final_two["step"] == final_one["step"] == STEPS
    assert final_two["loss"] == pytest.approx(final_one["loss"], rel=1e-4)
    assert final_two["val_loss"] == pytest.approx(final_one["val_loss"], rel=1e-4)

    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed)
    shutil.rmtree(resumed / "checkpoints" / f"step-{STEPS:08d}")  # back to step 6
    assert checkpoint.read(resumed).step == STEPS // 2
    run(config, resumed, 2, "--resume", "auto")
    assert losses(resumed) == losses(two)
    for name, value in weights(two).items():
        assert torch.equal(value, weights(resumed)[name]), name
