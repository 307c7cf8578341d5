"""The leaderboard: cell results averaged over seeds, ranked per task, as JSON and Markdown."""

from __future__ import annotations

import statistics
from typing import Any

MEAN_FIELDS = ("tokens_per_s", "seconds", "train_seconds", "steps", "val_loss", "val_accuracy")
SAME_FIELDS = ("family", "metric", "higher_is_better", "params", "d_model", "state_floats")


def _mean(values: list[float | None]) -> float | None:
    real = [v for v in values if v is not None]
    return statistics.fmean(real) if real else None


def aggregate(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{task: {"metric", "higher_is_better", "rows"}}: one row per layer (seeds averaged;
    ``std`` over seeds when there are several), rows ranked best first, failures last."""
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in results:
        groups.setdefault(r["task"], {}).setdefault(r["layer"], []).append(r)
    board = {}
    for task, by_layer in groups.items():
        rows = [_row(layer, cells) for layer, cells in by_layer.items()]
        known = next((r for r in rows if "metric" in r), {})
        higher = known.get("higher_is_better", True)
        board[task] = {
            "metric": known.get("metric"),
            "higher_is_better": higher,
            "rows": rank(rows, higher),
        }
    return board


def _row(layer: str, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """One layer's row: the mean over its seeds that trained. A seed whose every learning
    rate diverged is counted in ``diverged_seeds``; if all did, the row says so."""
    stored = [c for c in cells if "error" not in c]
    row: dict[str, Any] = {"layer": layer, "seeds": len(stored)}
    if not stored:
        return {**row, "family": cells[0]["family"], "value": None, "error": cells[0]["error"]}
    ok = [c for c in stored if "diverged" not in c]
    if len(ok) < len(stored):
        row["diverged_seeds"] = len(stored) - len(ok)
    if not ok:
        same = {k: stored[0][k] for k in SAME_FIELDS}
        return {**row, **same, "value": None, "diverged": stored[0]["diverged"]}
    values = [c["value"] for c in ok]
    row["value"] = _mean(values)
    real = [v for v in values if v is not None]
    row["std"] = statistics.stdev(real) if len(real) > 1 else None
    row.update({k: ok[0][k] for k in SAME_FIELDS})
    row.update({k: _mean([c.get(k) for c in ok]) for k in MEAN_FIELDS})
    row["val_bits_per_char"] = _mean([c.get("val_bits_per_char") for c in ok])
    row["lr"] = [c["lr"] for c in ok] if len(ok) > 1 else ok[0]["lr"]
    lengths = ok[0]["test_accuracy"]
    row["test_accuracy"] = {n: _mean([c["test_accuracy"].get(n) for c in ok]) for n in lengths}
    if len(ok) < len(cells):
        row["error"] = next(c["error"] for c in cells if "error" in c)
    return row


def rank(rows: list[dict[str, Any]], higher_is_better: bool) -> list[dict[str, Any]]:
    """Best first; rows without a value (failed, diverged) last, in their given order."""
    scored = [r for r in rows if r.get("value") is not None]
    missing = [r for r in rows if r.get("value") is None]
    scored.sort(key=lambda r: r["value"], reverse=higher_is_better)
    return scored + missing


def to_json(board: dict[str, Any], results: list[dict[str, Any]], options: dict) -> dict:
    """The machine-readable leaderboard: options, ranked rows, and every cell."""
    cells = [{k: v for k, v in r.items() if k != "loss_curve"} for r in results]
    return {"options": options, "tasks": board, "cells": cells}


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _state(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def table(task: str, entry: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Column names and cells of one task's ranking (shared by Markdown and HTML)."""
    rows = entry["rows"]
    lengths = next((list(r["test_accuracy"]) for r in rows if r.get("test_accuracy")), [])
    text = any(r.get("val_bits_per_char") is not None for r in rows)
    head = ["#", "layer", entry["metric"] or "metric"]
    head += ["bits/char"] * text + [f"acc@{n}" for n in lengths]
    head += ["params", "d_model", "state", "tokens/s", "seconds", "lr", "steps"]
    body = []
    for i, r in enumerate(rows, 1):
        if r.get("value") is None and ("params" not in r or "diverged" in r):
            note = r["diverged"] if "diverged" in r else f"failed: {r.get('error', '')}"
            body.append([str(i), r["layer"], note] + [""] * (len(head) - 3))
            continue
        value = _fmt(r["value"], ".4f") + (f" ± {r['std']:.4f}" if r.get("std") else "")
        line = [str(i), r["layer"], value]
        line += [_fmt(r.get("val_bits_per_char"), ".3f")] * text
        line += [_fmt(r["test_accuracy"].get(n), ".3f") for n in lengths]
        lr = r["lr"] if isinstance(r["lr"], list) else [r["lr"]]
        line += [
            f"{r['params']:,}",
            str(r["d_model"]),
            _state(r["state_floats"]),
            _fmt(r["tokens_per_s"], ",.0f"),
            _fmt(r["seconds"], ".1f"),
            ",".join(f"{x:g}" for x in lr),
            _fmt(r["steps"], ".0f"),
        ]
        body.append(line)
    return head, body


def overview(board: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Every layer against every task, its headline metric and its rank in that task
    (``0.998 (1)``), layers in the order of their mean rank (then name); shared by Markdown
    and HTML."""
    ranks: dict[str, dict[str, tuple[int, float | None]]] = {}
    for task, entry in board.items():
        for i, r in enumerate(entry["rows"], 1):
            ranks.setdefault(r["layer"], {})[task] = (i, r.get("value"))
    mean_rank = {layer: statistics.fmean(i for i, _ in r.values()) for layer, r in ranks.items()}
    order = sorted(ranks, key=lambda layer: (mean_rank[layer], layer))
    head = ["layer", "mean rank"] + [
        f"{task} ({'↑' if entry['higher_is_better'] else '↓'})" for task, entry in board.items()
    ]
    body = []
    for layer in order:
        mine = ranks[layer]
        line = [layer, f"{mean_rank[layer]:.1f}"]
        for task in board:
            i, value = mine.get(task, (None, None))
            line.append("" if i is None else f"{_fmt(value, '.3f')} ({i})")
        body.append(line)
    return head, body


def direction(entry: dict[str, Any]) -> str:
    return "higher is better" if entry["higher_is_better"] else "lower is better"


def model_size(options: dict[str, Any]) -> str:
    """How the models were sized: a fixed width or a parameter budget."""
    if options.get("d_model"):
        return f"Every model at d_model {options['d_model']}"
    return f"Parameter budget {options['params']:,} per model"


def _markdown(head: list[str], body: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
        *("| " + " | ".join(row) + " |" for row in body),
    ]


def to_markdown(board: dict[str, Any], options: dict[str, Any]) -> str:
    """One ranked table per task."""
    lines = [
        f"# statewise arena: {options.get('suite', 'custom')}",
        "",
        f"{model_size(options)}; "
        + (
            f"{options['budget_s']:g} s of training per cell (lr sweep included)"
            if options.get("steps") is None
            else f"{options['steps']} steps per learning rate"
        )
        + f"; seeds {options['seeds']}. state = floats per sequence; seconds = the whole "
        "cell (sweep and evaluation).",
    ]
    if len(board) > 1:
        lines += ["", "## Overview: metric (rank) per task", "", *_markdown(*overview(board))]
    for task, entry in board.items():
        lines += ["", f"## {task}: {entry['metric']} ({direction(entry)})", ""]
        lines += _markdown(*table(task, entry))
    return "\n".join(lines) + "\n"
