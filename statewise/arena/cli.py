"""``statewise arena``: the parser and the command (wired into statewise/cli.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from statewise.errors import ArgumentError


def add_arena_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "arena",
        help="train every layer on every task under one budget and rank them",
        description="Train every chosen layer on every chosen task with the same parameter "
        "budget and training time, and write OUT/leaderboard.md, leaderboard.json, PNG plots "
        "and index.html. A rerun of the same command skips the cells already finished.",
    )
    p.add_argument(
        "--suite",
        default="quick",
        metavar="quick|standard|full",
        help="quick: 6 layers x mqar, parity, char_lm, ~7 min (default); "
        "standard: every layer on 7+ tasks; full: larger, 3 seeds",
    )
    p.add_argument("--layers", metavar="A,B,...", help="registered layers (default: the suite's)")
    p.add_argument("--tasks", metavar="A,B,...", help="tasks (default: the suite's)")
    p.add_argument(
        "--budget-s",
        type=float,
        metavar="N",
        help="training seconds per cell, shared by its learning rates",
    )
    p.add_argument(
        "--steps",
        type=int,
        metavar="N",
        help="train N steps per learning rate instead of a time budget",
    )
    p.add_argument("--seeds", type=int, metavar="N", help="seeds 0 .. N-1 (default: the suite's)")
    p.add_argument(
        "--params", type=int, metavar="N", help="parameter budget per model (default: the suite's)"
    )
    p.add_argument(
        "--d-model",
        type=int,
        metavar="N",
        help="build every model at width N instead of matching the parameter budget",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="train N cells at once, each in its own process with 1/N of the threads "
        "(default 1); every cell still gets the same budget",
    )
    p.add_argument(
        "--executor",
        default="local",
        choices=("local", "ray"),
        help="local: cells in this process or --jobs worker processes (default); ray: each "
        "cell a Ray task (pip install 'statewise[ray]'), as many at once as the cluster's "
        "CPUs hold; results and resume are the same",
    )
    p.add_argument(
        "--address",
        metavar="ADDR",
        help="with --executor ray: join the running Ray cluster at ADDR (host:port, as "
        "`ray start --head` prints it; 'auto' finds one on this machine); default: start "
        "a Ray on this machine for the run",
    )
    p.add_argument(
        "--threads-per-cell",
        type=int,
        metavar="N",
        help="torch threads of each cell, and the CPUs a Ray cell asks for (default: this "
        "machine's torch threads // --jobs); with --steps the same N gives the same numbers "
        "under either executor",
    )
    p.add_argument("--out", metavar="DIR", help="output directory (default: runs/arena-SUITE)")
    return p


def _names(text: str | None, flag: str) -> list[str] | None:
    if text is None:
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ArgumentError(f"statewise arena: {flag} is empty")
    return items


def cmd_arena(args: argparse.Namespace, extra: list[str]) -> int:
    from statewise.arena import run_arena

    out = Path(args.out) if args.out else Path("runs") / f"arena-{args.suite}"
    report = run_arena(
        args.suite,
        out,
        layers=_names(args.layers, "--layers"),
        tasks=_names(args.tasks, "--tasks"),
        budget_s=args.budget_s,
        seeds=args.seeds,
        params=args.params,
        steps=args.steps,
        d_model=args.d_model,
        jobs=args.jobs,
        executor=args.executor,
        address=args.address,
        threads_per_cell=args.threads_per_cell,
    )
    print((out / "leaderboard.md").read_text(encoding="utf-8"), end="")
    failed = sum(1 for c in report["cells"] if "error" in c)
    print(
        f"\nwrote {out}/index.html, leaderboard.md, leaderboard.json"
        + (f"; {failed} cells failed (rerun to retry them)" if failed else ""),
        file=sys.stderr,
    )
    return 0
