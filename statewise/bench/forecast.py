"""``statewise bench forecast``: the long-horizon forecasting benchmark (issue 21), resumable
per (layer, horizon) cell.

Protocol (the Informer / Autoformer / PatchTST / DLinear one, "M" setting):

- Data: the CSV named by ``--data``; every column but the first (the date) is a variate,
  all of them are input and all are forecast (ETTh1: 7).
- Split: the ETT 12/4/4 months of hourly rows, 8640 / 2880 / 2880 (a file of >= 14400
  rows; a shorter one is split 70/10/20 %). Each column is scaled by the mean and
  population std of its training rows only.
- Windows: input ``--input-len`` (336 by default, DLinear's; PatchTST/64 read 512), stride 1;
  validation and test contexts reach back into the part before, so every row of a part is a
  target: 2880 - H + 1 test windows. MSE and MAE average over all of them, the horizon
  steps and the channels, on the scaled data. No window is dropped; the published codes'
  test loaders drop the last partial batch (drop_last=True), and each cell also records the
  scores over the windows such a loader keeps (forecast_cell.DROP_LAST_BATCHES).
- Model choice on the validation split only: the Forecaster keeps the epoch of the lowest
  validation MSE; nothing is tuned on the test split, and one configuration serves every
  horizon (forecast_published.py notes the published protocols).

Rows and limits: forecast_options.py (a registered layer channel-independent with RevIN and
patches, as PatchTST and xLSTMTime; dlinear as published).

Resuming: each cell's result is written, atomically, to OUT/<layer>-h<H>.json as soon as it
is done, with the settings that decide it (the data file's SHA-256 included); a rerun reads
the cells whose file holds the same settings instead of training them, refuses a file made
with other settings, and trains again any cell without a readable file (one interrupted).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from statewise.arena.runner import write_json
from statewise.bench.forecast_cell import Parts, run_cell, split_parts
from statewise.bench.forecast_options import (
    CMD,
    ForecastBench,
    cell_limits,
    cell_options,
    check,
    load_data,
)
from statewise.bench.forecast_published import published_for
from statewise.bench.speed import Progress
from statewise.errors import ArgumentError, TrainingDiverged
from statewise.tasks.forecast import split_rows

PROTOCOL = {
    "setting": "M: every column but the first in, all of them forecast",
    "split": "12/4/4 months (8640/2880/2880 rows) from 14400 rows on, else 70/10/20 %",
    "scaling": "per column, mean and population std of the training rows",
    "windows": "stride 1; val/test contexts reach back into the part before",
    "test_windows_dropped": 0,
    "model_choice": "the epoch of the lowest validation MSE",
}


def file_digest(path: str) -> str:
    """The SHA-256 of the file ``path`` (hex): the data a cell was trained on."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cell_settings(bench: ForecastBench, layer: str, horizon: int, digest: str) -> dict:
    """Everything that decides a cell's result; a stored cell is reused only if equal."""
    return {
        "data_sha256": digest,
        "layer": layer,
        "horizon": horizon,
        "input_len": bench.input_len,
        "options": cell_options(bench, layer),
        "limits": cell_limits(bench, layer),
    }


def cell_path(out: Path, layer: str, horizon: int) -> Path:
    """Where the cell's result is written."""
    return out / f"{layer}-h{horizon}.json"


def stored_cell(path: Path, settings: dict, log: Callable[[str], None]) -> dict | None:
    """The finished cell in ``path``, or None if there is none to read (never run, or
    interrupted); ArgumentError if it was made with other settings."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        log(f"{path}: unreadable, the cell is trained again")
        return None
    if not isinstance(stored, dict) or stored.get("settings") != settings:
        old = stored.get("settings") if isinstance(stored, dict) else None
        differ = sorted(
            k for k in settings if not isinstance(old, dict) or old.get(k) != settings[k]
        )
        raise ArgumentError(
            f"{CMD}: {path} holds a result made with other settings ({', '.join(differ)}); "
            "rerun with the same options, or choose another --out"
        )
    return stored


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _summary_line(result: dict) -> str:
    if "diverged" in result:
        return f"diverged: {result['diverged']}"
    test, val = result["test"], result["val"]
    line = (
        f"test MSE {test['mse']:.4f} MAE {test['mae']:.4f}, val MSE {val['mse']:.4f} "
        f"(best at step {result['best_step']} of {result['steps']}, {result['train_s']:.0f} s, "
        f"{result['tokens_per_s']:,.0f} tokens/s)"
    )
    p = result["probabilistic"]
    if p:
        line += (
            f"; {p['level']}% interval covers {p['coverage']:.3f}, CRPS {p['crps']:.4f} "
            f"(Gaussian of the training residuals: {p['gaussian_coverage']:.3f}, "
            f"{p['gaussian_crps']:.4f})"
        )
    return line


def run_forecast_bench(
    bench: ForecastBench, log: Callable[[str], None] = _stderr
) -> dict[str, Any]:
    """Run every (layer, horizon) cell not already finished in ``bench.out_dir``; the
    summary of all cells (also written to ``bench.json`` when given)."""
    data = load_data(bench.data)
    check(bench, data.shape[0])
    if bench.json and not Path(bench.json).parent.is_dir():
        raise ArgumentError(f"{CMD}: --json {bench.json}: no directory {Path(bench.json).parent}")
    digest, out = file_digest(bench.data), bench.out_dir
    cells = [(layer, h) for layer in bench.layers for h in bench.horizons]
    results: dict[tuple[str, int], dict] = {}
    for layer, h in cells:
        stored = stored_cell(cell_path(out, layer, h), cell_settings(bench, layer, h, digest), log)
        if stored is not None:
            results[layer, h] = stored
            log(f"{layer} h={h}: done before, read from {cell_path(out, layer, h)}")
    out.mkdir(parents=True, exist_ok=True)
    parts = split_parts(data, bench.input_len)
    todo = [cell for cell in cells if cell not in results]
    tick, threads = Progress(len(todo)), torch.get_num_threads()
    torch.set_num_threads(bench.threads or threads)
    try:
        for layer, h in todo:
            tick(f"{layer} h={h}: training")
            results[layer, h] = _train_cell(bench, parts, layer, h, digest, out, log)
    finally:
        torch.set_num_threads(threads)
    summary = {
        "protocol": PROTOCOL,
        "data": {
            "name": Path(bench.data).name,
            "sha256": digest,
            "rows": data.shape[0],
            "columns": data.shape[1],
            "split": split_rows(data.shape[0]),
        },
        "input_len": bench.input_len,
        "horizons": list(bench.horizons),
        "layers": list(bench.layers),
        "cells": [results[cell] for cell in cells],
        "published": [vars(p) for p in published_for(bench.data)],
        "torch": torch.__version__,
    }
    if bench.json:
        write_json(Path(bench.json), summary)
    return summary


def _train_cell(
    bench: ForecastBench,
    parts: Parts,
    layer: str,
    h: int,
    digest: str,
    out: Path,
    log: Callable[[str], None],
) -> dict:
    settings = cell_settings(bench, layer, h, digest)
    try:
        result = run_cell(
            parts,
            layer,
            h,
            bench.input_len,
            settings["options"],
            settings["limits"],
            bench.progress,
        )
    except TrainingDiverged as err:
        result = {"layer": layer, "horizon": h, "diverged": str(err)}
    except KeyboardInterrupt:
        log(f"{layer} h={h}: interrupted; finished cells are in {out}, rerun to resume")
        raise
    result = {
        "settings": settings,
        **result,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json(cell_path(out, layer, h), result)
    log(f"{layer} h={h}: {_summary_line(result)}")
    return result
