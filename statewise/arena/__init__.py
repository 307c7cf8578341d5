"""The arena: every chosen layer trained on every chosen task under the same parameter and
time budget, ranked per task (``statewise arena``; see docs/arena.md).

    from statewise.arena import run_arena
    report = run_arena("quick", out="runs/arena-quick")
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from statewise.arena.suites import Suite, TaskSpec, builtin_suites, task_spec
from statewise.arena.variants import split_entry
from statewise.errors import ArgumentError
from statewise.train.lock import writer_lock

__all__ = ["Suite", "TaskSpec", "run_arena", "builtin_suites", "task_spec"]


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def resolve(
    suite: str | Suite,
    layers: list[str] | None = None,
    tasks: list[str] | None = None,
    budget_s: float | None = None,
    seeds: int | None = None,
    params: int | None = None,
    steps: int | None = None,
    d_model: int | None = None,
) -> tuple[Suite, list[TaskSpec], list[str]]:
    """The suite with the overrides applied, its task specs and layers; ValueError with a
    one-line message for anything unknown or out of range."""
    if isinstance(suite, Suite):
        chosen = suite
    else:
        table = builtin_suites()
        if suite not in table:
            raise ArgumentError(
                f"statewise arena: unknown suite {suite!r}; choose one of: {', '.join(table)}"
            )
        chosen = table[suite]
    for flag, value in (
        ("--budget-s", budget_s),
        ("--seeds", seeds),
        ("--params", params),
        ("--steps", steps),
        ("--d-model", d_model),
    ):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ArgumentError(
                f"statewise arena: {flag} must be positive and finite, got {value:g}"
            )
    layers = _unique(layers) if layers else list(chosen.layers)
    for entry in layers:
        try:
            split_entry(entry)
        except ArgumentError as err:
            raise ArgumentError(f"statewise arena: {err}") from None
    try:
        specs = [task_spec(n) for n in (_unique(tasks) if tasks else chosen.tasks)]
    except ValueError as err:  # task_spec's unknown task
        raise ArgumentError(f"statewise arena: {err}") from None
    chosen = replace(
        chosen,
        layers=tuple(layers),
        tasks=tuple(s.name for s in specs),
        budget_s=chosen.budget_s if budget_s is None else float(budget_s),
        seeds=chosen.seeds if seeds is None else seeds,
        params=chosen.params if params is None else params,
        d_model=chosen.d_model if d_model is None else d_model,
    )
    return chosen, specs, layers


def run_arena(
    suite: str | Suite = "quick",
    out: str | Path = "runs/arena-quick",
    *,
    layers: list[str] | None = None,
    tasks: list[str] | None = None,
    budget_s: float | None = None,
    seeds: int | None = None,
    params: int | None = None,
    steps: int | None = None,
    d_model: int | None = None,
    jobs: int = 1,
    executor: str = "local",
    address: str | None = None,
    threads_per_cell: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) an arena and write OUT/leaderboard.{json,md}, the PNG plots and
    OUT/index.html; returns the leaderboard JSON. ``suite`` is a name from ``builtin_suites()``
    or a Suite of one's own. ``steps`` replaces the time budget by a
    fixed step count per learning rate (reproducible to the bit); ``d_model`` builds every
    model at that width instead of matching the parameter budget. ``jobs`` cells train at
    once, each in a process of its own with an equal share of torch's threads.
    ``executor="ray"`` runs every cell as a Ray task instead (a local Ray, or the cluster at
    ``address``), each asking for as many CPUs as it has threads; ``threads_per_cell``
    replaces the default share (torch's threads // jobs) under either executor. Results,
    resume and the leaderboard do not depend on the executor."""
    from statewise.arena.leaderboard import aggregate, to_json, to_markdown
    from statewise.arena.plots import write_plots
    from statewise.arena.report_html import render
    from statewise.arena.runner import run_cells, write_json

    chosen, specs, layers = resolve(suite, layers, tasks, budget_s, seeds, params, steps, d_model)
    cpus = os.cpu_count() or 1
    if not (isinstance(jobs, int) and 1 <= jobs <= cpus):
        raise ArgumentError(f"statewise arena: --jobs must be 1 .. {cpus} (the CPUs), got {jobs}")
    _check_executor(executor, address, threads_per_cell)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"statewise arena: --out {out} is a file, not a directory")
    time_budget = None if steps is not None else chosen.budget_s
    with writer_lock(out, f"statewise arena --out {out}"):
        results = run_cells(
            chosen,
            specs,
            layers,
            chosen.seeds,
            time_budget,
            steps,
            out,
            log,
            jobs,
            executor=executor,
            address=address,
            threads=threads_per_cell,
        )
        options = {
            "suite": chosen.name,
            "layers": layers,
            "tasks": list(chosen.tasks),
            "params": chosen.params,
            "d_model": chosen.d_model,
            "budget_s": time_budget,
            "steps": steps,
            "seeds": chosen.seeds,
            "n_layers": chosen.n_layers,
            "batch_size": chosen.batch_size,
            "jobs": jobs,
            "executor": executor,
        }
        board = aggregate(results)
        report = to_json(board, results, options)
        write_json(out / "leaderboard.json", report)
        (out / "leaderboard.md").write_text(to_markdown(board, options), encoding="utf-8")
        plots = write_plots(board, results, out)
        (out / "index.html").write_text(render(board, options, plots), encoding="utf-8")
    return report


def _check_executor(executor: str, address: str | None, threads_per_cell: int | None) -> None:
    """ArgumentError for an unknown executor, an address without Ray, a bad thread count, or
    Ray asked for when it is not installed (naming the extra that installs it)."""
    from statewise.arena.executors import INSTALL, ray_available
    from statewise.arena.runner import EXECUTORS

    if executor not in EXECUTORS:
        raise ArgumentError(
            f"statewise arena: unknown executor {executor!r}; choose one of: "
            + ", ".join(EXECUTORS)
        )
    if address is not None and executor != "ray":
        raise ArgumentError("statewise arena: --address is for --executor ray")
    if threads_per_cell is not None and not (
        isinstance(threads_per_cell, int)
        and not isinstance(threads_per_cell, bool)
        and threads_per_cell >= 1
    ):
        raise ArgumentError(
            f"statewise arena: --threads-per-cell must be a positive integer, got "
            f"{threads_per_cell!r}"
        )
    if executor == "ray" and not ray_available():
        raise ArgumentError(f"statewise arena: --executor ray needs Ray, not installed: {INSTALL}")
