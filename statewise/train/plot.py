"""``statewise plot``: the curves of one or more runs, overlaid, in one PNG.

Six panels: training loss, validation loss, learning rate and tokens/s against steps, and
training and validation loss against training time (the ``seconds`` of each record, summed
over resumes, so a resumed run's curve does not jump back). One colour per run, the same in
every panel; the legend sits below the panels, never over a curve.

The curves come from each run's newest complete checkpoint (its metrics.jsonl), read with
``statewise.train.checkpoint.read``: plotting a run that is still training is safe, and
nothing in a run directory is ever written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statewise.errors import ArgumentError
from statewise.train import checkpoint

# (metrics key, x key, panel title, y label); x "step" or "seconds"
PANELS = (
    ("loss", "step", "training loss", "loss (nats/token)"),
    ("val_loss", "step", "validation loss", "loss (nats/token)"),
    ("lr", "step", "learning rate", "learning rate"),
    ("tokens_per_s", "step", "training speed", "tokens/s"),
    ("loss", "seconds", "training loss against time", "loss (nats/token)"),
    ("val_loss", "seconds", "validation loss against time", "loss (nats/token)"),
)
FIGSIZE = (11.0, 10.0)  # inches: 3 rows of 2 panels, a legend row below
DPI = 100  # 1100 x 1000 pixels: readable panels, a PNG of about 100 kB


@dataclass(frozen=True)
class Run:
    """One run's records, read from its newest complete checkpoint."""

    path: Path
    label: str
    records: list[dict[str, Any]]


def read_runs(paths: list[str | Path]) -> list[Run]:
    """The metrics of each run directory, labelled ``name (layer)`` (just ``name`` when it
    names the layer already); the path as given instead of the name where two runs share
    a name. CheckpointError for a directory that is not a run (the one-line error of the
    CLI), ArgumentError for no path or the same path twice."""
    if not paths:
        raise ArgumentError("statewise plot: give at least one run directory")
    resolved = [Path(p).resolve() for p in paths]
    if len(set(resolved)) != len(resolved):
        raise ArgumentError("statewise plot: the same run directory is given twice")
    names = [Path(p).name or str(p) for p in paths]
    runs = []
    for path, name in zip(paths, names):
        saved = checkpoint.read(path)
        label = name if names.count(name) == 1 else str(path)
        layer = saved.config().model.layer
        if layer not in label:
            label += f" ({layer})"
        runs.append(Run(Path(path), label, saved.metrics()))
    return runs


def time_unit(seconds: float) -> tuple[str, float]:
    """The unit for a time axis whose largest value is ``seconds``: seconds up to 5
    minutes, minutes up to 5 hours, hours beyond, so its tick labels stay short."""
    if seconds <= 300:
        return "seconds", 1.0
    if seconds <= 5 * 3600:
        return "minutes", 60.0
    return "hours", 3600.0


def run_colours(n: int) -> list[Any]:
    """``n`` distinct colours: tab10 for up to 10 runs, evenly spaced over viridis beyond
    (tab10's colours are the easiest to tell apart, but there are only 10)."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    return [colormaps["viridis"](i / (n - 1)) for i in range(n)]


def _number(value: Any) -> bool:
    """Whether ``value`` is a finite number to plot (not a bool, a string, null or NaN:
    records written by another version or by hand may hold anything)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def figure(runs: list[Run]) -> Any:
    """The matplotlib Figure of ``runs``: six axes (PANELS, in order), one line per run and
    panel that has data, labelled with the run's label; the legend is a figure legend
    below the axes (constrained layout keeps it off them)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(3, 2).flat
    seconds = [r["seconds"] for run in runs for r in run.records if _number(r.get("seconds"))]
    unit, per = time_unit(float(max(seconds, default=0.0)))
    for ax, (key, x_key, title, ylabel) in zip(axes, PANELS):
        for run, colour in zip(runs, run_colours(len(runs))):
            points = [
                (r[x_key], r[key])
                for r in run.records
                if _number(r.get(key)) and _number(r.get(x_key))
            ]
            if not points:
                continue
            xs, ys = zip(*points)
            if x_key == "seconds":
                xs = [x / per for x in xs]
            marker = "o" if key == "val_loss" else None  # few points: show where they are
            ax.plot(
                xs, ys, color=colour, marker=marker, markersize=3, linewidth=1.2, label=run.label
            )
        ax.set_title(title)
        ax.set_xlabel("step" if x_key == "step" else f"training time ({unit})")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.legend(
        [Line2D([], [], color=colour, linewidth=2) for colour in run_colours(len(runs))],
        [run.label for run in runs],
        loc="outside lower center",
        ncols=min(len(runs), 3),
        fontsize=9,
    )
    return fig


def check_out(out: Path, runs: list[Path]) -> None:
    """ArgumentError unless ``out`` is a .png file in an existing directory, outside every
    run directory (plotting never writes into a run)."""
    if out.suffix.lower() != ".png":
        raise ArgumentError(f"statewise plot: --out {out}: must be a .png file")
    if not out.parent.is_dir():
        raise ArgumentError(f"statewise plot: --out {out}: no directory {out.parent}")
    target = out.resolve()
    for run in runs:
        if target.is_relative_to(run.resolve()):
            raise ArgumentError(
                f"statewise plot: --out {out} is inside run directory {run}; "
                "plot never writes into a run, choose a path outside it"
            )


def plot_runs(paths: list[str | Path], out: str | Path) -> Any:
    """Draw the curves of the runs in ``paths`` into PNG ``out``; returns the Figure."""
    out = Path(out)
    check_out(out, [Path(p) for p in paths])
    fig = figure(read_runs(paths))
    fig.savefig(out, format="png")
    return fig
