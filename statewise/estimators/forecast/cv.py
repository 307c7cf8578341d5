"""Backtesting over rolling origins: ``Forecaster.cross_validation``.

On each series' own time grid (n_s rows), window k = 0 .. n_windows - 1 forecasts the h rows
after the cutoff row c_k - 1, with

    c_k = n_s - h - (n_windows - 1 - k) * step_size        (step_size defaults to h)

so the last window ends at the series' last row, and the windows are step_size rows apart
(they overlap when step_size < h). The model is fitted on every series' rows before c_0
(``refit=False``: once, then each window forecasts from its own cutoff, reading the history
up to it and the future-known covariates after it, with the training statistics), or on
the rows before c_k for every window (``refit=True``: a fresh fit, same options and seed).
Every series needs c_0 >= 1; a series with fewer than horizon + 1 rows before c_0 has no
training window (it is still forecast). Afterwards the forecaster keeps the weights of its
last fit and continues every series from the end of ``df`` (as NeuralForecast's
``cross_validation`` leaves its models), so ``predict()`` forecasts the future.

The result has one row per (series, cutoff, step): unique_id, ds, cutoff (the timestamp of
the last row before the window), y (the actual value, NaN where missing), and the forecast
columns of ``Forecaster.predict``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from statewise.errors import ArgumentError, ArgumentTypeError, DataError
from statewise.estimators.forecast.dataframe import last_rows
from statewise.estimators.forecast.frame import (
    DS,
    ID,
    Y,
    check_frame,
    forecast_frame,
    is_dataframe,
    resolve_freq,
    timestamps,
    to_grid,
)
from statewise.estimators.forecast.losses import check_levels
from statewise.estimators.forecast.options import check_h
from statewise.estimators.forecast.training import forecast, forecast_columns


def cross_validation(
    forecaster: Any,
    df: Any,
    h: int | None,
    n_windows: int,
    step_size: int | None,
    refit: bool,
    *,
    static_df: Any,
    level: Any,
    fit_kwargs: dict[str, Any],
) -> Any:
    """See the module doc; fits ``forecaster``: it keeps the weights of the last training
    part, and predict() continues every series from the end of ``df``."""
    if not is_dataframe(df):
        raise ArgumentTypeError(f"df must be a long pandas DataFrame, got {type(df).__name__}")
    h = check_h(h, forecaster.horizon)
    for name, value in (("n_windows", n_windows), ("step_size", step_size)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ArgumentError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(refit, bool):
        raise ArgumentTypeError(f"refit must be True or False, got {refit!r}")
    levels = () if level is None else check_levels(level)
    step = h if step_size is None else step_size
    o = forecaster.options
    columns = [Y, *o["hist_exog_list"], *o["futr_exog_list"]]
    check_frame(df, "df", columns, nan_allowed=(Y,))
    freq = resolve_freq(df, o["freq"])
    gridded = to_grid(df, freq, columns)
    lengths = torch.tensor(gridded.lengths())
    offsets = (n_windows - 1 - torch.arange(n_windows)) * step  # window k: c_k = n - h - offset
    cutoffs = lengths[:, None] - h - offsets  # (S, n_windows)
    short = (cutoffs[:, 0] < 1).nonzero().flatten().tolist()
    if short:
        raise DataError(
            f"series {gridded.ids[short[:5]].tolist()} are too short for {n_windows} windows "
            f"of h = {h} rows, step_size {step} apart"
        )
    pieces = []
    for k in range(n_windows) if refit else [0]:
        forecaster.fit(_before(df, gridded, cutoffs[:, k], freq), static_df=static_df, **fit_kwargs)
        panel = forecaster.frame.panel(
            gridded, forecaster.input_len, static_df, future_steps=forecaster.horizon
        )
        chosen = range(k, k + 1) if refit else range(n_windows)
        s = torch.arange(len(gridded.ids)).repeat_interleave(len(chosen))
        c = cutoffs[:, list(chosen)].reshape(-1)
        params = forecast(forecaster.model, forecaster.family, panel, (s, c), forecaster.horizon)
        pieces.append((s, c, params[:, :h, 0]))
    forecaster.frame.tail = last_rows(gridded, forecaster.input_len, freq)
    s, c, params = (torch.cat(parts) for parts in zip(*pieces))
    order = torch.from_numpy(np.lexsort((c.numpy(), s.numpy())))
    s, c, params = s[order], c[order], params[order]
    return _frame(forecaster, gridded, freq, s.tolist(), c.tolist(), params, h, levels)


def _before(df: Any, gridded: Any, cutoffs: torch.Tensor, freq: Any) -> Any:
    """The rows of ``df`` before each series' cutoff row index."""
    last = {
        uid: timestamps(start, 1, freq, int(c) - 1)[0]
        for uid, start, c in zip(gridded.ids.tolist(), gridded.starts, cutoffs)
    }
    return df[df[DS] <= df[ID].map(last)]


def _frame(forecaster, gridded, freq, s, c, params, h, levels) -> Any:
    stamps, cutoff, actual = [], [], []
    for series, cut in zip(s, c):
        start, rows = gridded.starts[series], gridded.rows[series]
        stamps.append(timestamps(start, h, freq, cut))
        cutoff.append(np.repeat(np.asarray(timestamps(start, 1, freq, cut - 1)), h))
        actual.append(rows[cut : cut + h, 0])
    columns = {"cutoff": np.concatenate(cutoff), Y: np.concatenate(actual)}
    columns.update(forecast_columns(forecaster.family, forecaster.name, params, levels))
    return forecast_frame(gridded.ids[s], stamps, columns)
