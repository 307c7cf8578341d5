"""The arena's PNG plots (matplotlib figures without pyplot, imported only when plotting).

Every layer has one style, the same in every plot: a colour and a marker (``layer_style``),
given by its place in the layer registry, so mamba is the same orange triangle in the
length-generalisation panels, the loss curves and the MQAR plot. Legends sit below the
panels, outside them, so they never cover a curve.
"""

from __future__ import annotations

import math
import zlib
from functools import cache
from pathlib import Path
from typing import Any

# 20 colours that stay apart on white: matplotlib's tab10, then the dark and the middle
# shade of each of tab20b's five hues (the light shades of tab20 fade into the background)
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#393b79",
    "#637939",
    "#8c6d31",
    "#843c39",
    "#7b4173",
    "#5254a3",
    "#8ca252",
    "#bd9e39",
    "#ad494a",
    "#a55194",
)
# 11 filled markers: 11 and 20 share no factor, so colour and marker together repeat only
# after 220 layers
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "*")
STYLES = len(PALETTE) * len(MARKERS)
TASK_FILLS = ("full", "none", "left", "bottom", "right", "top")  # MQAR tasks, in order
LEGEND_ROW_IN = 0.24  # inches per legend row at fontsize 8
LEGEND_COLUMN_IN = 1.5  # inches per legend column: a layer name and its marker


@cache
def _registered() -> tuple[str, ...]:
    from statewise.layers import names

    return tuple(names())


def style_index(layer: str) -> int:
    """The style number of ``layer``: its place in the registry (``statewise.layers.names``,
    sorted by name), so registered layers never share a style; a name that is not
    registered gets one of the numbers after them, from a checksum of the name (stable
    from run to run, unlike Python's ``hash``)."""
    registered = _registered()
    if layer in registered:
        return registered.index(layer)
    return len(registered) + zlib.crc32(layer.encode()) % (STYLES - len(registered))


def layer_style(layer: str) -> dict[str, str]:
    """``{"color": ..., "marker": ...}`` of ``layer``, the same in every arena plot; the
    first 20 registered layers get 20 different colours, and colour and marker together
    differ for every registered layer."""
    i = style_index(layer)
    return {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[i % len(MARKERS)]}


def _ordered(layers: set[str] | list[str]) -> list[str]:
    return sorted(set(layers), key=lambda name: (style_index(name), name))


def _handle(layer: str) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], linewidth=1.2, markersize=5, label=layer, **layer_style(layer))


def _figure(n_panels: int, legend_entries: int, width: float = 4.5, height: float = 3.4):
    """A figure of ``n_panels`` panels in rows of 3, with room below for a legend of
    ``legend_entries`` entries; returns (figure, axes, legend columns)."""
    from matplotlib.figure import Figure

    cols = min(n_panels, 3)
    rows = math.ceil(n_panels / cols)
    fig_width = max(width * cols, 2 * LEGEND_COLUMN_IN)
    ncols = max(1, min(legend_entries, int(fig_width // LEGEND_COLUMN_IN)))
    legend_height = math.ceil(legend_entries / ncols) * LEGEND_ROW_IN + 0.3
    fig = Figure(figsize=(fig_width, height * rows + legend_height), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).flat
    for ax in axes[n_panels:]:
        ax.remove()
    return fig, list(axes[:n_panels]), ncols


def _legend(fig: Any, handles: list[Any], ncols: int) -> None:
    """One legend for the whole figure, below the panels (constrained layout makes room)."""
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize=8)


def _save(fig: Any, path: Path) -> bool:
    if fig is None:
        return False
    fig.savefig(path, dpi=110)
    return True


def mqar_figure(board: dict[str, Any]) -> Any:
    """MQAR accuracy against state size (floats per sequence, log scale): one point per
    layer and MQAR task (mqar, mqar_128x8, ...), in the layer's style, each task with its
    own fill (full, hollow, half); None if the arena had no MQAR results."""
    from matplotlib.lines import Line2D

    tasks = [t for t in board if t == "mqar" or t.startswith("mqar_")]
    series = {t: [r for r in board[t]["rows"] if r.get("value") is not None] for t in tasks}
    if not any(series.values()):
        return None
    present = _ordered([r["layer"] for rows in series.values() for r in rows])
    task_entries = len(tasks) if len(tasks) > 1 else 0
    fig, (ax,), ncols = _figure(1, len(present) + task_entries, width=6.5, height=4.5)
    for i, rows in enumerate(series.values()):
        fill = TASK_FILLS[i % len(TASK_FILLS)]
        for r in rows:
            style = layer_style(r["layer"])
            ax.plot(
                [r["state_floats"]],
                [r["value"]],
                linestyle="none",
                markersize=6,
                fillstyle=fill,
                label=r["layer"],
                **style,
            )
            ax.annotate(
                r["layer"],
                (r["state_floats"], r["value"]),
                fontsize=7,
                color=style["color"],
                xytext=(4, 3),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("state size (floats per sequence, all layers)")
    ax.set_ylabel(board[tasks[0]]["metric"])
    ax.set_title("MQAR: recall against state size")
    ax.grid(alpha=0.3)
    handles = [_handle(layer) for layer in present]
    if task_entries:
        handles += [
            Line2D(
                [],
                [],
                linestyle="none",
                marker="o",
                color="black",
                fillstyle=TASK_FILLS[i % len(TASK_FILLS)],
                label=task,
            )
            for i, task in enumerate(tasks)
        ]
    _legend(fig, handles, ncols)
    return fig


def mqar_vs_state(board: dict[str, Any], path: Path) -> bool:
    """Draw ``mqar_figure`` into ``path``; False (nothing written) without MQAR results."""
    return _save(mqar_figure(board), path)


def length_generalisation_figure(board: dict[str, Any]) -> Any:
    """Accuracy against test length, one panel per task that has test lengths, one line
    per layer in its style; None if no task has test lengths."""
    tasks = [t for t, e in board.items() if any(r.get("test_accuracy") for r in e["rows"])]
    if not tasks:
        return None
    present = _ordered([r["layer"] for t in tasks for r in board[t]["rows"]])
    fig, axes, ncols = _figure(len(tasks), len(present))
    for ax, task in zip(axes, tasks):
        for r in board[task]["rows"]:
            points = [(int(n), a) for n, a in r.get("test_accuracy", {}).items() if a is not None]
            if points:
                points.sort()
                ax.plot(
                    *zip(*points),
                    markersize=4,
                    linewidth=1.2,
                    label=r["layer"],
                    **layer_style(r["layer"]),
                )
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.03, 1.05)
        ax.set_title(task)
        ax.set_xlabel("test length")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    _legend(fig, [_handle(layer) for layer in present], ncols)
    return fig


def length_generalisation(board: dict[str, Any], path: Path) -> bool:
    """Draw ``length_generalisation_figure`` into ``path``; False without test lengths."""
    return _save(length_generalisation_figure(board), path)


def loss_curves_figure(results: list[dict[str, Any]]) -> Any:
    """Training loss against training seconds, one panel per task, the first seed of each
    layer (its best learning rate), each layer in its style with about 6 markers on its
    curve; None if no result has a loss curve."""
    curves: dict[str, dict[str, list]] = {}
    for r in results:
        if r.get("loss_curve"):
            curves.setdefault(r["task"], {}).setdefault(r["layer"], r["loss_curve"])
    if not curves:
        return None
    present = _ordered([layer for by_layer in curves.values() for layer in by_layer])
    fig, axes, ncols = _figure(len(curves), len(present))
    for ax, (task, by_layer) in zip(axes, curves.items()):
        for layer, curve in by_layer.items():
            points = [(t, loss) for _, t, loss in curve if loss is not None]
            if points:
                ax.plot(
                    *zip(*points),
                    linewidth=1.2,
                    markersize=4,
                    markevery=max(1, len(points) // 6),
                    label=layer,
                    **layer_style(layer),
                )
        ax.set_title(task)
        ax.set_xlabel("training seconds")
        ax.set_ylabel("training loss (nats)")
        ax.grid(alpha=0.3)
    _legend(fig, [_handle(layer) for layer in present], ncols)
    return fig


def loss_curves(results: list[dict[str, Any]], path: Path) -> bool:
    """Draw ``loss_curves_figure`` into ``path``; False without loss curves."""
    return _save(loss_curves_figure(results), path)


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
