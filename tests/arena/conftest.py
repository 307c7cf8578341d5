"""A tiny arena: small tasks, small models, a few steps."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from statewise import cli
from statewise.arena import suites as arena_suites
from statewise.arena.cli import add_arena_parser, cmd_arena
from statewise.arena.suites import Suite, TaskSpec

TINY_TASKS = {
    "mqar": TaskSpec("mqar", {"task": "mqar", "seq_len": 16, "vocab_size": 16, "n_pairs": 2}),
    "parity": TaskSpec("parity", {"task": "parity", "train_max_len": 6}, (7, 12), "test"),
}


def make_tiny_suite(monkeypatch: pytest.MonkeyPatch) -> Suite:
    """2 layers x 2 tasks at ~3k parameters; the tasks' settings shrunk for speed."""
    for name, spec in TINY_TASKS.items():
        monkeypatch.setitem(arena_suites.TASK_SPECS, name, spec)
    return Suite(
        "tiny",
        ("mingru", "gru"),
        ("mqar", "parity"),
        params=3_000,
        budget_s=2.0,
        lrs={"default": (3e-3,), "nonlinear": (1e-3, 1e-2)},
        batch_size=8,
        eval_batches=1,
    )


@pytest.fixture
def tiny_suite(monkeypatch) -> Suite:
    return make_tiny_suite(monkeypatch)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, dict]:
    """The tiny suite run once, 3 steps per learning rate: (its --out, its report)."""
    from statewise.arena import run_arena

    out = tmp_path_factory.mktemp("arena")
    with pytest.MonkeyPatch.context() as monkeypatch:
        report = run_arena(make_tiny_suite(monkeypatch), out, steps=3, log=lambda line: None)
    return out, report


@pytest.fixture
def arena_main(monkeypatch):
    """statewise.cli.main with the arena command (wired here if cli.py does not yet)."""
    if "arena" not in cli.COMMANDS:
        build = cli.build_parser

        def with_arena() -> argparse.ArgumentParser:
            parser = build()
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            add_arena_parser(sub)
            return parser

        monkeypatch.setattr(cli, "build_parser", with_arena)
        monkeypatch.setitem(cli.COMMANDS, "arena", cmd_arena)
    return cli.main
