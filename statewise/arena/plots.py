"""The arena's PNG plots (matplotlib, Agg backend, imported only when plotting)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(plt, n: int, width: float = 4.5, height: float = 3.4):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def mqar_vs_state(board: dict[str, Any], path: Path) -> bool:
    """MQAR accuracy against state size (floats per sequence, log scale), one point per
    layer and one colour per MQAR task (mqar, mqar_128x8, ...); False if the arena had no
    MQAR results."""
    tasks = [t for t in board if t == "mqar" or t.startswith("mqar_")]
    series = {t: [r for r in board[t]["rows"] if r.get("value") is not None] for t in tasks}
    if not any(series.values()):
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for task, rows in series.items():
        points = ax.scatter(
            [r["state_floats"] for r in rows], [r["value"] for r in rows], s=30, label=task
        )
        for r in rows:
            ax.annotate(
                r["layer"],
                (r["state_floats"], r["value"]),
                fontsize=8,
                color=points.get_facecolor()[0],
                xytext=(4, 3),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("state size (floats per sequence, all layers)")
    ax.set_ylabel(board[tasks[0]]["metric"])
    ax.set_title("MQAR: recall against state size")
    if len(tasks) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def length_generalisation(board: dict[str, Any], path: Path) -> bool:
    """Accuracy against test length, one panel per task that has test lengths."""
    tasks = [t for t, e in board.items() if any(r.get("test_accuracy") for r in e["rows"])]
    if not tasks:
        return False
    plt = _pyplot()
    fig, axes = _grid(plt, len(tasks))
    for ax, task in zip(axes, tasks):
        for r in board[task]["rows"]:
            points = [(int(n), a) for n, a in r.get("test_accuracy", {}).items() if a is not None]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=r["layer"])
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.03, 1.05)
        ax.set_title(task)
        ax.set_xlabel("test length")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def loss_curves(results: list[dict[str, Any]], path: Path) -> bool:
    """Training loss against training seconds, one panel per task, the first seed of each
    layer (its best learning rate)."""
    curves: dict[str, dict[str, list]] = {}
    for r in results:
        if r.get("loss_curve"):
            curves.setdefault(r["task"], {}).setdefault(r["layer"], r["loss_curve"])
    if not curves:
        return False
    plt = _pyplot()
    fig, axes = _grid(plt, len(curves))
    for ax, (task, by_layer) in zip(axes, curves.items()):
        for layer, curve in by_layer.items():
            points = [(t, loss) for _, t, loss in curve if loss is not None]
            if points:
                ax.plot(*zip(*points), label=layer, linewidth=1.2)
        ax.set_title(task)
        ax.set_xlabel("training seconds")
        ax.set_ylabel("training loss (nats)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


PLOTS = {
    "mqar_state.png": ("MQAR accuracy against state size", "board", mqar_vs_state),
    "length_generalisation.png": (
        "Accuracy against test length",
        "board",
        length_generalisation,
    ),
    "loss_curves.png": ("Training loss curves", "results", loss_curves),
}


def write_plots(board: dict[str, Any], results: list[dict[str, Any]], out: Path) -> list[str]:
    """Draw every plot there is data for into ``out``; returns the file names written."""
    written = []
    for name, (_, source, draw) in PLOTS.items():
        if draw(board if source == "board" else results, out / name):
            written.append(name)
    return written
