"""Ranking and seed averaging of the leaderboard, and the Markdown table."""

from __future__ import annotations

import pytest

from statewise.arena.leaderboard import aggregate, rank, to_markdown


def _cell(task, layer, value, seed=0, higher=True, **extra):
    return {
        "task": task,
        "layer": layer,
        "seed": seed,
        "family": "f",
        "value": value,
        "metric": "val_accuracy" if higher else "val_loss_nats",
        "higher_is_better": higher,
        "params": 100,
        "d_model": 8,
        "state_floats": 16,
        "tokens_per_s": 10.0,
        "seconds": 1.0,
        "train_seconds": 0.5,
        "steps": 3,
        "val_loss": 1.0,
        "val_accuracy": value,
        "lr": 1e-3,
        "test_accuracy": {},
        **extra,
    }


def test_rank_orders_by_direction_and_puts_missing_last():
    rows = [
        {"layer": "a", "value": 0.2},
        {"layer": "b", "value": None},
        {"layer": "c", "value": 0.9},
        {"layer": "d", "value": 0.5},
    ]
    assert [r["layer"] for r in rank(rows, True)] == ["c", "d", "a", "b"]
    assert [r["layer"] for r in rank(rows, False)] == ["a", "d", "c", "b"]


def test_aggregate_averages_seeds_and_ranks_per_task():
    results = [
        _cell("mqar", "lstm", 0.5, seed=0),
        _cell("mqar", "lstm", 0.7, seed=1),
        _cell("mqar", "attention", 1.0),
        _cell("char_lm", "lstm", 1.9, higher=False),
        _cell("char_lm", "mamba", 1.6, higher=False),
        {
            "task": "char_lm",
            "layer": "broken",
            "seed": 0,
            "family": "f",
            "value": None,
            "error": "NaN loss",
        },
    ]
    board = aggregate(results)
    mqar = board["mqar"]["rows"]
    assert [r["layer"] for r in mqar] == ["attention", "lstm"]
    assert mqar[1]["value"] == pytest.approx(0.6) and mqar[1]["seeds"] == 2
    assert mqar[1]["std"] == pytest.approx(0.1414, abs=1e-4) and mqar[1]["lr"] == [1e-3, 1e-3]
    lm = board["char_lm"]
    assert not lm["higher_is_better"] and lm["metric"] == "val_loss_nats"
    assert [r["layer"] for r in lm["rows"]] == ["mamba", "lstm", "broken"]
    options = {"params": 100, "budget_s": 10.0, "seeds": 2, "suite": "t"}
    md = to_markdown(board, options)
    assert "| 1 | attention | 1.0000 |" in md and "| 3 | broken | failed: NaN loss |" in md
    assert "0.6000 ± 0.1414" in md and "(lower is better)" in md


def test_overview_crosses_layers_and_tasks_by_mean_rank():
    from statewise.arena.leaderboard import overview

    board = aggregate(
        [
            _cell("mqar", "lstm", 0.5),
            _cell("mqar", "attention", 1.0),
            _cell("mqar", "mamba", 0.7),
            _cell("char_lm", "lstm", 1.6, higher=False),
            _cell("char_lm", "mamba", 1.9, higher=False),
        ]
    )
    head, body = overview(board)
    assert head == ["layer", "mean rank", "mqar (↑)", "char_lm (↓)"]
    # lstm: ranks 3 and 1 -> 2.0; attention: 1 (no char_lm) -> 1.0; mamba: 2 and 2 -> 2.0
    assert body == [
        ["attention", "1.0", "1.000 (1)", ""],
        ["lstm", "2.0", "0.500 (3)", "1.600 (1)"],
        ["mamba", "2.0", "0.700 (2)", "1.900 (2)"],
    ]
    md = to_markdown(board, {"params": 100, "budget_s": 1.0, "seeds": 1})
    assert "## Overview: metric (rank) per task" in md and "| lstm | 2.0 |" in md
