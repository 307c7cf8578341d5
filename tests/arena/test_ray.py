"""The arena on Ray (``--executor ray``): the same stored numbers as the local executor at
the same threads per cell (1 here), resume after an interrupted Ray run, a local Ray that is
started, bound to loopback and shut down with nothing left behind, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from statewise.arena import run_arena
from statewise.arena.executors import INSTALL, ray_available, start_local_ray

needs_ray = pytest.mark.skipif(not ray_available(), reason=f"ray is not installed ({INSTALL})")

STEPS = 3
THREADS = 1  # threads per cell under both executors: the numbers must then be equal bit for bit
TIMING = ("seconds", "train_seconds", "tokens_per_s")  # wall-clock: differ from run to run
ROOT = Path(__file__).resolve().parents[2]


def _descendants(pid: int) -> set[int]:
    """The live processes below ``pid`` (from /proc), their children included."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[-1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _wait_gone(pids: set[int], seconds: float = 30.0) -> set[int]:
    """The pids of ``pids`` still alive after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        alive = {p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray of 2 CPUs for the module, shut down at its end; the processes it
    started (GCS, raylet, workers) must all be gone after the shutdown."""
    if not ray_available():
        pytest.skip(f"ray is not installed ({INSTALL})")
    before = _descendants(os.getpid())
    ray = start_local_ray(num_cpus=2)
    try:
        yield ray
    finally:
        started = _descendants(os.getpid()) - before
        ray.shutdown()
        assert started, "the local Ray started no process of its own?"
        assert not _wait_gone(started), "Ray left processes behind after shutdown"


def _cells(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((out / "cells").iterdir())}


def _numbers(cell: dict) -> dict:
    """A stored cell without its wall-clock timings (in the sweep and the curve too)."""
    kept = {k: v for k, v in cell.items() if k not in TIMING}
    kept["sweep"] = [{k: v for k, v in r.items() if k not in TIMING} for r in cell["sweep"]]
    kept["loss_curve"] = [[step, loss] for step, _, loss in cell["loss_curve"]]
    return kept


def test_missing_ray_is_one_line_naming_the_extra(arena_main, capsys, tmp_path, monkeypatch):
    from statewise.arena import executors

    monkeypatch.setattr(executors, "ray_available", lambda: False)
    code = arena_main(["arena", "--executor", "ray", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "pip install 'statewise[ray]'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--address", "127.0.0.1:6379"], "--address is for --executor ray"),
        (["--threads-per-cell", "0"], "--threads-per-cell must be a positive integer"),
        (["--executor", "dask"], "invalid choice: 'dask'"),
    ],
)
def test_bad_executor_arguments(arena_main, capsys, tmp_path, argv, words):
    code = arena_main(["arena", *argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and words in err, err
    assert not (tmp_path / "out").exists()


@needs_ray
@pytest.mark.slow
def test_cli_without_address_starts_a_local_ray_and_stops_it(
    arena_main, capsys, tiny_suite, tmp_path
):
    """No --address and no Ray running in the process: the command starts one and shuts it
    down, leaving no process behind (runs without the module's cluster: run it alone)."""
    ray = sys.modules.get("ray")  # not imported here: the arena's import binds it to loopback
    if ray is not None and ray.is_initialized():
        pytest.skip("a Ray is running in this process (the module's cluster)")
    before = _descendants(os.getpid())
    argv = ["--layers", "mingru", "--tasks", "mqar", "--steps", "2", "--params", "3000"]
    code = arena_main(["arena", "--executor", "ray", *argv, "--out", str(tmp_path / "out")])
    assert code == 0
    err = capsys.readouterr().err
    assert "ray: a local Ray, " in err and "mqar mingru seed 0: val_accuracy" in err, err
    assert (tmp_path / "out" / "cells" / "mqar__mingru__seed0.json").exists()
    assert not sys.modules["ray"].is_initialized()
    assert not _wait_gone(_descendants(os.getpid()) - before)


@needs_ray
def test_ray_cells_equal_local_cells_and_resume_completes_an_interrupted_run(
    ray_cluster, tiny_suite, tmp_path
):
    """2 layers x 1 task, 3 steps per lr, 1 thread per cell: the local run and the Ray run
    store the same numbers bit for bit (widths, steps, losses, accuracies, curves); a Ray
    run interrupted after its first stored cell cancels the other and a rerun trains only
    that one."""
    args = dict(steps=STEPS, layers=["mingru", "gru"], tasks=["mqar"], threads_per_cell=THREADS)
    run_arena(tiny_suite, tmp_path / "local", log=lambda line: None, **args)

    class Stop(KeyboardInterrupt):
        pass

    def stop_after_first_result(line: str) -> None:
        lines.append(line)
        if "val_accuracy" in line:
            raise Stop

    lines: list[str] = []
    with pytest.raises(Stop):
        run_arena(tiny_suite, tmp_path / "ray", executor="ray", log=stop_after_first_result, **args)
    assert lines[0].startswith("ray: a local Ray, 2 CPUs: cells of 1 thread(s), up to 2 at once")
    assert len(list((tmp_path / "ray" / "cells").iterdir())) == 1
    assert not (tmp_path / "ray.lock").exists()  # the lock is released
    deadline = time.monotonic() + 30  # the cancelled cell gives its CPU back
    while ray_cluster.available_resources().get("CPU") != 2.0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray_cluster.available_resources().get("CPU") == 2.0

    lines = []
    report = run_arena(tiny_suite, tmp_path / "ray", executor="ray", log=lines.append, **args)
    assert sum("done before, skipped" in line for line in lines) == 1
    assert sum(": training (" in line for line in lines) == 1
    assert report["options"]["executor"] == "ray"

    local, remote = _cells(tmp_path / "local"), _cells(tmp_path / "ray")
    assert sorted(local) == sorted(remote) == ["mqar__gru__seed0.json", "mqar__mingru__seed0.json"]
    for name in local:
        assert remote[name]["threads"] == local[name]["threads"] == THREADS
        assert len(remote[name]["sweep"]) == len(tiny_suite.lrs_for(local[name]["family"]))
        assert _numbers(remote[name]) == _numbers(local[name]), name
    board = json.loads((tmp_path / "local" / "leaderboard.json").read_text())["tasks"]
    assert [r["layer"] for r in report["tasks"]["mqar"]["rows"]] == [
        r["layer"] for r in board["mqar"]["rows"]
    ]


@needs_ray
def test_local_ray_binds_to_loopback(ray_cluster):
    (node,) = ray_cluster.nodes()
    assert node["NodeManagerAddress"] == "127.0.0.1"
    assert node["Resources"]["CPU"] == 2.0


@needs_ray
def test_a_cell_larger_than_every_node_is_refused(ray_cluster, tiny_suite, tmp_path):
    with pytest.raises(ValueError, match="asks for 3 CPUs and the largest node .* has 2"):
        run_arena(
            tiny_suite,
            tmp_path,
            steps=1,
            layers=["mingru"],
            tasks=["mqar"],
            executor="ray",
            threads_per_cell=3,
            log=lambda line: None,
        )
    assert list((tmp_path / "cells").iterdir()) == []


@needs_ray
def test_cli_address_joins_a_running_cluster(ray_cluster, tmp_path):
    """`statewise arena --executor ray --address ADDR` in another process joins the module's
    cluster: its cell runs there and its result is stored by that driver."""
    address = ray_cluster.get_runtime_context().gcs_address
    argv = [
        *("--executor", "ray", "--address", address, "--layers", "mingru", "--tasks", "parity"),
        *("--steps", "2", "--params", "3000", "--threads-per-cell", "1"),
    ]
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "statewise", "arena", *argv, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"ray: the Ray cluster at {address}, 2 CPUs" in done.stderr
    assert (out / "cells" / "parity__mingru__seed0.json").exists()
    assert (out / "leaderboard.md").exists()
