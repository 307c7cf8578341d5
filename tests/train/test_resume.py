"""A run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from statewise.train import checkpoint
from tests.run_dirs import metrics, newest


def train_cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "statewise",
        "train",
        str(config),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def losses(out: Path) -> list[tuple]:
    return [(m["step"], m["loss"], m.get("val_loss")) for m in checkpoint.load_metrics(out)]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, tiny_config):
    steps = 240
    config = tiny_config(steps=steps, checkpoint_every=20)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same thread count in every run

    whole = tmp_path / "whole"
    subprocess.run(train_cmd(config, whole), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        train_cmd(config, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not checkpoint.is_checkpoint(killed) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    stopped_at = checkpoint.load_train_state(killed)["step"]
    assert 0 < stopped_at < steps, "the run must be killed part way for this test to mean much"

    resumed = subprocess.run(
        train_cmd(config, killed, "--resume", "auto"), env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert losses(killed) == losses(whole)
    assert losses(killed)[-1][0] == steps
    a = torch.load(newest(killed) / "train_state.pt", weights_only=True)
    b = torch.load(newest(whole) / "train_state.pt", weights_only=True)
    assert a["step"] == b["step"] == steps and a["tokens"] == b["tokens"]
    weights = [checkpoint.load(out).state_dict() for out in (killed, whole)]
    assert weights[0].keys() == weights[1].keys()
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


def test_resume_auto_on_a_finished_run_changes_nothing(tmp_path, tiny_config):
    config = tiny_config(steps=10, checkpoint_every=5)
    out = tmp_path / "run"
    subprocess.run(train_cmd(config, out), check=True, capture_output=True)
    before = (newest(out) / "metrics.jsonl").read_text()
    again = subprocess.run(
        train_cmd(config, out, "--resume", "auto"), capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert (newest(out) / "metrics.jsonl").read_text() == before
    # and --resume auto on an empty --out simply starts
    fresh = tmp_path / "fresh"
    subprocess.run(train_cmd(config, fresh, "--resume", "auto"), check=True, capture_output=True)
    assert metrics(fresh)[-1]["step"] == 10


def test_sigterm_saves_a_checkpoint_and_resume_equals_uninterrupted(
    tmp_path, tiny_config, monkeypatch, capsys
):
    """SIGTERM (a scheduler stopping the job) checkpoints the step in progress and exits
    143; the resumed run ends as the uninterrupted one. No periodic checkpoint falls inside
    the run, so the only one to resume from is the one SIGTERM wrote. The signal is sent
    by the process to itself while step 7's batch is drawn, so the test needs no timing."""
    from statewise import cli
    from statewise.train import trainer

    config = str(tiny_config(steps=20, checkpoint_every=1000))
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert cli.main(["train", config, "--out", str(whole), "--no-progress"]) == 0

    build = trainer.build_task

    def terminated_at_step_7(data, seed):
        task = build(data, seed)
        draw = task.train_batch

        def train_batch(step, batch_size):
            if step == 7:
                os.kill(os.getpid(), signal.SIGTERM)
            return draw(step, batch_size)

        task.train_batch = train_batch
        return task

    monkeypatch.setattr(trainer, "build_task", terminated_at_step_7)
    code = cli.main(["train", config, "--out", str(stopped), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 143 and "terminated" in err and "--resume auto" in err
    assert checkpoint.load_train_state(stopped)["step"] == 7
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    monkeypatch.setattr(trainer, "build_task", build)
    args = ["train", config, "--out", str(stopped), "--resume", "auto", "--no-progress"]
    assert cli.main(args) == 0
    assert losses(stopped) == losses(whole)


# A wrapper run as the training process: it SIGKILLs itself in the middle of its
# KILL_AT-th torch.save (the checkpoint's train_state.pt), after writing half the bytes,
# so one kill falls inside a save deterministically, with no hook in statewise itself.
KILL_IN_SAVE = """
import io, os, signal, sys
import torch
from statewise import cli

real_save, calls = torch.save, [0]

def save(obj, f, *args, **kwargs):
    calls[0] += 1
    if calls[0] == int(os.environ["KILL_AT"]):
        data = io.BytesIO()
        real_save(obj, data)
        with open(f, "wb") as out:
            out.write(data.getvalue()[: len(data.getvalue()) // 2])
            out.flush()
            os.fsync(out.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)

torch.save = save
sys.exit(cli.main(sys.argv[1:]))
"""


def saved_step(out: Path) -> int:
    """The newest checkpoint's step, from the directory names (0: none yet)."""
    steps = [int(p.name[5:]) for p in (out / "checkpoints").glob("step-*")]
    return max(steps, default=0)


def test_three_sigkills_one_during_a_save_then_resume_equals_uninterrupted(tmp_path, tiny_config):
    """Kill 1 and 3 at a random (seeded) moment once the run has saved a new checkpoint;
    kill 2 half way through writing a checkpoint. Each restart is ``--resume auto``; the
    run ends with the weights, optimizer state and losses of a run never stopped."""
    from statewise import cli

    steps = 300
    config = tiny_config(steps=steps, checkpoint_every=10)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_AT": "2"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1); saves a start-up
    try:
        assert cli.main(["train", str(config), "--out", str(whole), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    wrapper = tmp_path / "kill_in_save.py"
    wrapper.write_text(KILL_IN_SAVE)
    rng = random.Random(18)
    for attempt in range(3):
        before = saved_step(killed)
        cmd = train_cmd(config, killed, *(["--resume", "auto"] if attempt else []))
        if attempt == 1:  # the wrapper replaces "-m statewise"
            cmd = [sys.executable, str(wrapper), *cmd[3:]]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if attempt != 1:
            deadline = time.monotonic() + 120
            while saved_step(killed) <= before and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.1))
            assert proc.poll() is None, "the run ended before its kill; make it longer"
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=120)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
        assert before <= saved_step(killed) < steps
        if attempt == 1:  # the half-written save is left as its hidden tmp directory
            (partial,) = (killed / "checkpoints").glob(".step-*.tmp-*")
            assert (partial / "train_state.pt").stat().st_size > 0
            assert not (partial / checkpoint.MANIFEST).exists()
    resumed = subprocess.run(
        train_cmd(config, killed, "--resume", "auto"), env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert not list((killed / "checkpoints").glob(".step-*"))  # the leftover was removed
    assert losses(killed) == losses(whole) and losses(killed)[-1][0] == steps
    weights = [checkpoint.load(out).state_dict() for out in (killed, whole)]
    assert weights[0].keys() == weights[1].keys()
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name
    states = [torch.load(newest(o) / "train_state.pt", weights_only=True) for o in (killed, whole)]
    moments = [s["optimizer"]["state"] for s in states]
    for key, value in moments[0].items():
        assert torch.equal(value["exp_avg_sq"], moments[1][key]["exp_avg_sq"]), key
