"""The run directory: its layout, readers that never write, one writer at a time."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from statewise.cli import main
from statewise.errors import CheckpointError, RunLockedError
from statewise.train import checkpoint, lock
from statewise.train.checkpoint import CheckpointWarning
from tests.conftest import TINY_CHAR
from tests.run_dirs import newest


def tree(path: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``path`` (and beside it, for the siblings a writer could touch):
    its bytes and modification time, to show that a reader changed nothing."""
    out = {}
    for p in sorted(path.parent.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(path.parent))] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory) -> Path:
    """A finished run of 15 steps, a checkpoint every 5 (so step 5 was pruned)."""
    base = tmp_path_factory.mktemp("trained")
    text = base / "text.txt"
    text.write_text("To be, or not to be, that is the question. " * 400)
    config = base / "tiny.toml"
    config.write_text(TINY_CHAR.format(layer="mingru", path=text, steps=15, checkpoint_every=5))
    out = base / "run"
    assert main(["train", str(config), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture
def run(trained_once, tmp_path) -> Path:
    """A copy of the trained run, for a test to damage."""
    out = tmp_path / "runs" / "run"
    shutil.copytree(trained_once, out)
    return out


def test_layout_keeps_the_last_two_checkpoints_each_with_a_manifest(run):
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-00000010", "step-00000015"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints"]
    for name in names:
        snapshot = run / "checkpoints" / name
        manifest = json.loads((snapshot / "manifest.json").read_text())
        assert manifest["step"] == int(name[5:]) and set(manifest["files"]) == set(checkpoint.FILES)
        checkpoint.verify(snapshot)
    assert checkpoint.latest(run).name == "step-00000015"
    assert not lock.lock_path(run).exists()  # released when the run ended


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "no manifest", "delete a file"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(run, damage, capsys):
    snapshot = run / "checkpoints" / "step-00000015"
    weights = snapshot / "model.safetensors"
    if damage == "flip a byte":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "no manifest":
        (snapshot / "manifest.json").unlink()
    else:
        (snapshot / "train_state.pt").unlink()
    before = tree(run)
    with pytest.warns(CheckpointWarning, match="step-00000015"):
        assert checkpoint.latest(run).name == "step-00000010"
    with pytest.warns(CheckpointWarning):
        assert checkpoint.load_train_state(run)["step"] == 10
    with pytest.warns(CheckpointWarning):
        checkpoint.load(run)
    assert checkpoint.is_checkpoint(run)
    assert main(["eval", "--checkpoint", str(run), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["step"] == 10
    assert (
        err.startswith("statewise: warning: skipped 1 newer checkpoint")
        and len(err.splitlines()) == 1
    )
    assert tree(run) == before


def test_readers_leave_a_writers_leftovers_and_the_users_files_alone(run, tmp_path):
    """Today's defect: opening DIR deleted DIR.tmp (the save in progress) and DIR.old."""
    siblings = [run.with_name("run.tmp"), run.with_name("run.old")]
    for s in siblings:
        s.mkdir()
        (s / "mine.txt").write_text("a user's file")
    leftover = run / "checkpoints" / ".step-00000020.tmp-123"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half written")
    before = tree(run)
    assert checkpoint.is_checkpoint(run)
    checkpoint.load(run)
    checkpoint.load_metrics(run)
    assert main(["eval", "--checkpoint", str(run)]) == 0
    assert (
        main(["generate", "--checkpoint", str(run), "--prompt", "a", "--max-new-tokens", "3"]) == 0
    )
    assert tree(run) == before


def test_only_leftovers_is_an_error_that_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints" / ".step-00000005.tmp-99").mkdir(parents=True)
    before = tree(out)
    assert not checkpoint.is_checkpoint(out)
    with pytest.raises(CheckpointError, match="not a statewise checkpoint"):
        checkpoint.latest(out)
    assert main(["eval", "--checkpoint", str(out)]) == 2
    assert "not a statewise checkpoint" in capsys.readouterr().err
    assert tree(out) == before


def test_every_checkpoint_corrupt_is_an_error_naming_each(run):
    for snapshot in (run / "checkpoints").iterdir():
        (snapshot / "config.toml").write_text("[model]\n")
    with pytest.raises(CheckpointError, match="holds no complete checkpoint") as err:
        checkpoint.latest(run)
    assert "step-00000015" in str(err.value) and "step-00000010" in str(err.value)


def test_the_flat_layout_of_earlier_versions_is_still_read(run, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in checkpoint.FILES:
        (flat / name).write_bytes((newest(run) / name).read_bytes())
    assert checkpoint.latest(flat) == flat
    assert checkpoint.load_train_state(flat)["step"] == 15
    reference = checkpoint.load(run).state_dict()
    for name, tensor in checkpoint.load(flat).state_dict().items():
        assert torch.equal(tensor, reference[name]), name


def test_the_writer_cleans_its_leftovers_and_sets_aside_an_unreadable_newest(
    run, trained_once, capsys
):
    leftover = run / "checkpoints" / ".step-00000020.tmp-123"
    leftover.mkdir()
    newest_dir = run / "checkpoints" / "step-00000015"
    (newest_dir / "metrics.jsonl").write_text("damaged")
    config = trained_once.parent / "tiny.toml"
    args = ["train", str(config), "--out", str(run), "--resume", "auto", "--no-progress"]
    args += ["--train.steps=20"]
    assert main(args) == 0
    assert "skipped 1 newer checkpoint" in capsys.readouterr().err
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    # resumed from step 10; the damaged step 15 is kept aside, never read again
    assert names == ["step-00000015", "step-00000020", "unreadable-step-00000015"]
    assert (run / "checkpoints" / "unreadable-step-00000015" / "metrics.jsonl").read_text() == (
        "damaged"
    )
    assert checkpoint.load_train_state(run)["step"] == 20


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(out: Path, **holder) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    lock.lock_path(out).write_text(json.dumps(holder))


@pytest.mark.parametrize("command", ["train", "arena"])
def test_a_second_writer_is_refused_with_one_line(tmp_path, tiny_config, capsys, command):
    out = tmp_path / "out"
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "command": "statewise x"}
    write_lock(out, **holder)
    if command == "train":
        argv = ["train", str(tiny_config()), "--out", str(out), "--no-progress"]
    else:
        argv = ["arena", "--suite", "quick", "--layers", "gru", "--tasks", "parity"]
        argv += ["--steps", "1", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"process {os.getpid()}" in err
    assert "being written" in err and socket.gethostname() in err
    assert not out.exists()  # nothing was started
    assert json.loads(lock.lock_path(out).read_text()) == holder  # the holder's lock stays


def test_a_lock_of_another_host_is_never_taken_over(tmp_path):
    out = tmp_path / "out"
    write_lock(out, host="elsewhere.example", pid=dead_pid(), command="statewise train")
    with pytest.raises(RunLockedError, match="elsewhere.example"):
        lock.acquire(out, "test")


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, tiny_config, capsys):
    out = tmp_path / "out"
    pid = dead_pid()
    write_lock(out, host=socket.gethostname(), pid=pid, command="statewise train")
    assert main(["train", str(tiny_config(steps=5)), "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"statewise: warning: took over the lock of {out} from process {pid}" in err
    assert not lock.lock_path(out).exists()
    assert checkpoint.load_train_state(out)["step"] == 5


def test_a_reused_pid_does_not_hold_a_lock(tmp_path):
    """A live pid whose start time differs from the recorded one is another process."""
    out = tmp_path / "out"
    write_lock(out, host=socket.gethostname(), pid=os.getpid(), process_start="1", command="x")
    if lock._process_start(os.getpid()) is None:
        pytest.skip("no /proc here: a pid's start time cannot be read")
    with pytest.warns(lock.StaleLockWarning):
        info = lock.acquire(out, "test")
    lock.release(out, info)
    assert not lock.lock_path(out).exists()


def test_eval_while_train_writes_leaves_the_run_intact(tmp_path, tiny_config):
    """`statewise eval` in a loop against a directory that a `statewise train` process
    checkpoints at every step: every eval reads a complete checkpoint, and the training
    run ends with all its checkpoints (today's readers deleted the save in progress)."""
    steps = 60
    config = tiny_config(steps=steps, checkpoint_every=1)
    out = tmp_path / "run"
    train = subprocess.Popen(
        [sys.executable, "-m", "statewise", "train", str(config), "--out", str(out)]
        + ["--no-progress"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    steps_read = []
    deadline = time.monotonic() + 120
    while train.poll() is None and time.monotonic() < deadline:
        if checkpoint.is_checkpoint(out):
            assert main(["eval", "--checkpoint", str(out), "--json", "--val-batches", "1"]) == 0
            steps_read.append(checkpoint.load_train_state(out)["step"])
    _, err = train.communicate(timeout=120)
    assert train.returncode == 0, err
    assert steps_read == sorted(steps_read)
    during = [s for s in steps_read if s < steps]
    assert len(during) >= 2, "eval must have run while training was writing"
    snapshots = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert snapshots == [checkpoint.snapshot_name(steps - 1), checkpoint.snapshot_name(steps)]
    for name in snapshots:
        checkpoint.verify(out / "checkpoints" / name)
    assert [m["step"] for m in checkpoint.load_metrics(out)][-1] == steps
