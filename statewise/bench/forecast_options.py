"""The options of ``statewise bench forecast`` (:class:`ForecastBench`, one field per flag),
the Forecaster options and training limits of each row, and the checks that run before
anything is trained.

Rows (:func:`cell_options`): a registered layer runs as PatchTST and xLSTMTime do:
channel-independent (each variate its own sequence through shared weights), RevIN, patches
of ``--patch-len`` steps at half that stride (PatchTST's 16 and 8: 41 tokens for 336 steps,
so the recurrence runs 8x fewer steps), and the ``--loss`` head (Student-t by default, so
the cell also gets the probabilistic check); ``--lr`` (the Forecaster's 1e-3) when given.
The defaults d_model 16, dropout 0.3 and ``--linear-skip`` (a linear forecast of each
variate's normalised context added to the location, models/forecast/net.py) are the
configuration chosen on ETTh1's validation split (docs/forecasting.md).
"dlinear" runs as DLinear was published: MSE loss, no normalisation of the windows, weights
shared by the channels.

Limits (:func:`cell_limits`): ``--epochs`` / ``--budget-s`` when given (for every row; the
first reached stops), otherwise DEFAULT_EPOCHS epochs (the Forecaster's default, which the
chosen configuration was selected with), capped at DEFAULT_BUDGET_S seconds of training for
a registered layer (the issue's 20 minutes per horizon).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from statewise import layers as registry
from statewise.errors import ArgumentError, DataError, InputError
from statewise.estimators.fit import check_limits
from statewise.estimators.forecast.forecaster import Forecaster
from statewise.tasks.forecast import read_csv, split_rows

DEFAULT_HORIZONS = (96, 192, 336, 720)
DEFAULT_LAYERS = ("lstm", "mingru", "lru", "mlstm", "mamba", "dlinear")
DEFAULT_EPOCHS = 10
DEFAULT_BUDGET_S = 1200.0
CMD = "statewise bench forecast"


@dataclass
class ForecastBench:
    """The options of a run (the command's flags)."""

    data: str
    horizons: tuple[int, ...] = DEFAULT_HORIZONS
    layers: tuple[str, ...] = DEFAULT_LAYERS
    input_len: int = 336
    budget_s: float | None = None
    epochs: int | None = None
    out: str | None = None
    json: str | None = None
    loss: str = "studentt"
    d_model: int = 16
    n_layers: int = 2
    patch_len: int = 16
    lr: float | None = None
    dropout: float = 0.3
    linear_skip: bool = True
    seed: int = 0
    threads: int | None = None
    progress: bool = True

    @property
    def out_dir(self) -> Path:
        """--out, by default runs/bench-forecast-<data file name>-L<input_len>."""
        return Path(self.out or f"runs/bench-forecast-{Path(self.data).stem}-L{self.input_len}")


def cell_options(bench: ForecastBench, layer: str) -> dict[str, Any]:
    """The Forecaster options of a row (see the module doc)."""
    if layer == "dlinear":
        return {"loss": "mse", "revin": False, "subtract_last": False, "seed": bench.seed}
    patch = bench.patch_len
    options = {
        "mode": "channel_independent",
        "revin": True,
        "loss": bench.loss,
        "d_model": bench.d_model,
        "n_layers": bench.n_layers,
        "patch_len": patch,
        "patch_stride": max(1, patch // 2) if patch else None,
        "seed": bench.seed,
    }
    # set only when not the Forecaster's default, so that cells stored by earlier runs
    # (without these keys) keep their settings
    if bench.lr is not None:
        options["lr"] = bench.lr
    if bench.dropout:
        options["dropout"] = bench.dropout
    if bench.linear_skip:
        options["linear_skip"] = True
    return options


def cell_limits(bench: ForecastBench, layer: str) -> dict[str, Any]:
    """The training limits of a row (see the module doc)."""
    if bench.epochs is not None or bench.budget_s is not None:
        return {"epochs": bench.epochs, "budget_s": bench.budget_s}
    if layer == "dlinear":
        return {"epochs": DEFAULT_EPOCHS, "budget_s": None}
    return {"epochs": DEFAULT_EPOCHS, "budget_s": DEFAULT_BUDGET_S}


def load_data(path: str) -> torch.Tensor:
    """Every column but the first of the CSV ``path``, float64 (rows, K), finite."""
    if not Path(path).is_file():
        raise DataError(f"{CMD}: --data: no file {path!r}")
    try:
        data, _ = read_csv(path)
    except DataError as err:
        raise DataError(f"{CMD}: --data {path}: {err}") from None
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise DataError(
            f"{CMD}: --data {path}: not a CSV of numbers after a date column ({err})"
        ) from None
    if data.shape[1] == 0 or not torch.isfinite(data).all():
        raise DataError(
            f"{CMD}: --data {path}: needs a date column, then numeric columns without "
            "missing or infinite values"
        )
    return data


def check(bench: ForecastBench, rows: int) -> None:
    """ArgumentError naming the flag for options that cannot run on ``rows`` rows of data;
    the Forecaster's own option checks run for every cell before anything is trained."""
    horizons, names = list(bench.horizons), list(bench.layers)
    for flag, values in (("--horizons", horizons), ("--layers", names)):
        if not values:
            raise ArgumentError(f"{CMD}: {flag} is empty")
    if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in horizons):
        raise ArgumentError(f"{CMD}: --horizons must be positive ints, got {horizons}")
    for flag, values in (("--horizons", horizons), ("--layers", names)):
        if len(set(values)) != len(values):
            raise ArgumentError(f"{CMD}: {flag} must be distinct, got {values}")
    for name in names:
        if name != "dlinear" and name not in registry.names():
            raise ArgumentError(
                f"{CMD}: --layers: unknown layer {name!r}; choose registered layers "
                f"({', '.join(registry.names())}) or dlinear"
            )
    if bench.linear_skip and bench.loss == "negbin":
        raise ArgumentError(
            f"{CMD}: --loss negbin has no location for the linear skip (on by default); "
            "add --no-linear-skip"
        )
    if bench.threads is not None and bench.threads < 1:
        raise ArgumentError(f"{CMD}: --threads must be >= 1, got {bench.threads}")
    L = bench.input_len
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ArgumentError(f"{CMD}: --input-len must be a positive int, got {L!r}")
    n_train, n_val, n_test = split_rows(rows)
    longest = max(horizons)
    if n_train < L + longest or min(n_val, n_test) < longest:
        raise ArgumentError(
            f"{CMD}: --horizons {longest} with --input-len {L} needs >= {L + longest} training "
            f"rows and >= {longest} validation and test rows; the data split into "
            f"{n_train} / {n_val} / {n_test}"
        )
    for name in names:
        try:
            Forecaster(name, L, longest, **cell_options(bench, name))
            check_limits(**cell_limits(bench, name), max_steps=None)
        except InputError as err:
            raise ArgumentError(f"{CMD}: layer {name}: {err}") from None
