"""The arena end to end on a tiny suite: outputs, resume, determinism, bad arguments."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from pathlib import Path

import pytest
import torch

from statewise.arena import run_arena

STEPS = 3
VOLATILE = ("seconds", "train_seconds", "tokens_per_s", "loss_curve", "sweep")


def _run(suite, out, lines=None, **kwargs):
    return run_arena(
        suite, out, steps=STEPS, log=(lines if lines is not None else []).append, **kwargs
    )


def test_tiny_arena_writes_every_output(tiny_run):
    tmp_path, report = tiny_run
    for name in (
        "leaderboard.md",
        "leaderboard.json",
        "index.html",
        "loss_curves.png",
        "mqar_state.png",
        "length_generalisation.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == [
        "mqar__gru__seed0.json",
        "mqar__mingru__seed0.json",
        "parity__gru__seed0.json",
        "parity__mingru__seed0.json",
    ]
    stored = json.loads((tmp_path / "leaderboard.json").read_text())
    assert stored == json.loads(json.dumps(report))
    assert set(stored["tasks"]) == {"mqar", "parity"}
    parity = stored["tasks"]["parity"]
    assert parity["metric"] == "test_accuracy" and parity["higher_is_better"]
    for row in parity["rows"]:
        assert set(row["test_accuracy"]) == {"7", "12"}
        mean = sum(row["test_accuracy"].values()) / 2
        assert row["value"] == pytest.approx(mean)
        # tiny models: one width step of 8 changes the count by about 2x (closeness of the
        # match is tested in test_budget.py)
        assert 1_000 < row["params"] < 6_000 and row["d_model"] % 8 == 0
        assert row["state_floats"] > 0 and row["tokens_per_s"] > 0
    cells = {(c["task"], c["layer"]): c for c in stored["cells"]}
    gru = cells["mqar", "gru"]  # "nonlinear" family: a sweep of two learning rates
    assert [r["lr"] for r in gru["sweep"]] == [1e-3, 1e-2]
    assert gru["lr"] in (1e-3, 1e-2) and gru["steps"] == STEPS
    assert [r["lr"] for r in cells["mqar", "mingru"]["sweep"]] == [3e-3]
    md = (tmp_path / "leaderboard.md").read_text()
    assert "## mqar: val_accuracy (higher is better)" in md and "acc@12" in md
    html = (tmp_path / "index.html").read_text()
    assert '<img src="mqar_state.png"' in html and "<table>" in html


def test_resume_skips_finished_cells_and_retrains_the_same(tiny_run, tiny_suite, tmp_path):
    shutil.copytree(tiny_run[0], tmp_path, dirs_exist_ok=True)  # keeps the files' mtimes
    cells = tmp_path / "cells"
    before = {p.name: p.stat().st_mtime_ns for p in cells.iterdir()}
    removed = cells / "parity__mingru__seed0.json"
    first = json.loads(removed.read_text())
    removed.unlink()
    lines: list[str] = []
    _run(tiny_suite, tmp_path, lines)
    assert sum("skipped" in line for line in lines) == 3
    assert sum(": training (" in line for line in lines) == 1
    assert [line for line in lines if ": training (" in line][0].startswith(
        "[3/4] parity mingru seed 0"
    )
    after = {p.name: p.stat().st_mtime_ns for p in cells.iterdir()}
    assert {k: v for k, v in after.items() if k != removed.name} == {
        k: v for k, v in before.items() if k != removed.name
    }
    again = json.loads(removed.read_text())  # seeds fix data and init: the same result
    for key in set(first) - set(VOLATILE):
        assert again[key] == first[key], key
    assert [p[2] for p in again["loss_curve"]] == [p[2] for p in first["loss_curve"]]


def test_resume_refuses_results_of_other_settings(tiny_suite, tmp_path):
    _run(tiny_suite, tmp_path, layers=["mingru"], tasks=["mqar"])
    with pytest.raises(ValueError, match="other settings"):
        run_arena(
            tiny_suite,
            tmp_path,
            steps=STEPS + 1,
            layers=["mingru"],
            tasks=["mqar"],
            log=lambda line: None,
        )


def _assert_usage_error(code, err, *words):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--layers", "mingru,nosuch"], ["unknown layer 'nosuch'", "mamba"]),
        (["--tasks", "mqar,nosuch"], ["unknown task 'nosuch'", "parity"]),
        (["--suite", "huge"], ["unknown suite 'huge'", "quick"]),
        (["--budget-s", "-5"], ["--budget-s must be positive"]),
        (["--seeds", "0"], ["--seeds must be positive"]),
        (["--steps", "0"], ["--steps must be positive"]),
        (["--layers", ","], ["--layers is empty"]),
        (["--jobs", "0"], ["--jobs must be 1 .."]),
        (["--d-model", "0"], ["--d-model must be positive"]),
        (["--jobs", "100000"], ["--jobs must be 1 .."]),
        (["--budget-s", "soon"], ["invalid float value"]),
    ],
)
def test_bad_arguments_one_line_exit_2(arena_main, capsys, tmp_path, argv, words):
    out = tmp_path / "out"
    code = arena_main(["arena", *argv, "--out", str(out)])
    _assert_usage_error(code, capsys.readouterr().err, *words)
    assert not out.exists()


def test_out_that_is_a_file(arena_main, capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    code = arena_main(["arena", "--out", str(tmp_path / "f")])
    _assert_usage_error(code, capsys.readouterr().err, "is a file")


def test_a_task_without_a_token_metric_is_refused_before_training(
    tiny_suite, tmp_path, monkeypatch
):
    from statewise.arena import runner

    class Forecast:
        metric = "mse"

    monkeypatch.setattr(runner, "_task", lambda data, seed: Forecast())
    with pytest.raises(ValueError, match="reports 'mse'"):
        _run(tiny_suite, tmp_path / "out")
    assert not (tmp_path / "out" / "cells").exists()


def test_time_budget_plans_steps(tiny_suite, tmp_path):
    lines: list[str] = []
    report = run_arena(
        tiny_suite, tmp_path, layers=["mingru"], tasks=["mqar"], budget_s=0.5, log=lines.append
    )
    (cell,) = report["cells"]
    assert cell["steps"] >= 1 and cell["settings"]["budget_s"] == 0.5
    assert cell["settings"]["steps"] is None and report["options"]["budget_s"] == 0.5
    assert len(lines) == 2 and "training (" in lines[0] and "val_accuracy" in lines[1]


def test_jobs_train_cells_in_worker_processes_with_the_same_results(tiny_run, tiny_suite, tmp_path):
    """--jobs 2: the cells run in two spawned processes (one torch thread each here) and give
    what the in-process run gave: the same widths, steps and sweeps (seeded), and losses
    equal up to the float reordering of a different thread count."""
    lines: list[str] = []
    report = _run(tiny_suite, tmp_path, lines, jobs=2)
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == sorted(
        p.name for p in (tiny_run[0] / "cells").iterdir()
    )
    assert sum(": training (" in line for line in lines) == 4
    assert report["options"]["jobs"] == 2
    share = max(1, torch.get_num_threads() // 2)
    assert {c["threads"] for c in report["cells"]} == {share}
    before = {(c["task"], c["layer"]): c for c in tiny_run[1]["cells"]}
    for cell in report["cells"]:
        old = before[cell["task"], cell["layer"]]
        for key in ("d_model", "params", "steps", "lr", "state_floats"):
            assert cell[key] == old[key], key
        assert cell["val_loss"] == pytest.approx(old["val_loss"], rel=1e-4)


def test_d_model_fixes_every_width(tiny_suite, tmp_path):
    """--d-model: every model at that width (Zoology's comparison), not the budget's."""
    report = _run(tiny_suite, tmp_path, d_model=16)
    for cell in report["cells"]:
        assert cell["d_model"] == 16 and cell["settings"]["d_model"] == 16
    assert len({c["params"] for c in report["cells"]}) > 1  # the layers differ in size
    md = (tmp_path / "leaderboard.md").read_text()
    assert "Every model at d_model 16" in md
    assert "Every model at d_model 16" in (tmp_path / "index.html").read_text()


def _long_cell(started: str) -> None:
    """A cell that says it has started, then would run for 10 minutes."""
    Path(started).touch()
    time.sleep(600)


def test_an_interrupted_pool_stops_the_cells_its_workers_are_running(tmp_path):
    """SIGTERM reaches the main process only: the workers' running cells must not go on
    (the interpreter would wait for them at exit)."""
    from statewise.arena import runner

    started = tmp_path / "started"
    with pytest.raises(KeyboardInterrupt):
        with runner._executor(2, 1) as pool:
            pool.submit(_long_cell, str(started))
            deadline = time.monotonic() + 120
            while not started.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert started.exists(), "the worker never started the cell"
            workers = multiprocessing.active_children()
            raise KeyboardInterrupt
    deadline = time.monotonic() + runner.WORKER_GRACE_S + 30
    while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(w.is_alive() for w in workers)


def test_a_layer_with_a_model_variant_runs_as_its_own_entry(tiny_suite, tmp_path):
    """ "gru+rmt": the gru stack as a Recurrent Memory Transformer, beside plain gru, with
    gru's learning-rate sweep; an unknown variant is refused, naming the variants."""
    from dataclasses import replace

    from statewise.arena import resolve
    from statewise.arena.variants import VARIANTS, split_entry

    assert split_entry("gru+rmt") == ("gru", VARIANTS["rmt"])
    with pytest.raises(ValueError, match="variants: rmt"):
        split_entry("gru+nope")
    suite = replace(tiny_suite, layers=("gru", "gru+rmt"), tasks=("mqar",))
    report = _run(suite, tmp_path)
    cells = {c["layer"]: c for c in report["cells"]}
    assert set(cells) == {"gru", "gru+rmt"}
    rmt = cells["gru+rmt"]
    assert rmt["family"] == cells["gru"]["family"] and len(rmt["sweep"]) == 2
    assert rmt["value"] is not None and rmt["params"] > cells["gru"]["params"] * 0.5
    with pytest.raises(ValueError, match="unknown variant"):
        resolve(suite, layers=["gru+nope"])
