"""Long-format DataFrames <-> per-series arrays on a regular time grid, and the forecast
DataFrames the Forecaster returns. pandas is imported only here, only when a DataFrame is
used (``pip install 'statewise[forecast]'``).

Layout (NeuralForecast's and utilsforecast's): one row per (``unique_id``, ``ds``), the
target in ``y``, covariates in other columns; static features in a separate ``static_df``
(``unique_id`` plus one column per feature, one row per series).

Frequency: ``freq`` if given, else inferred: ``pandas.infer_freq`` on every series with at
least 3 rows and no gaps, all of which must agree; when no series can be inferred (gaps
everywhere), the greatest common divisor of the steps between consecutive timestamps.
Integer ``ds`` (time indices) use an int step: ``freq`` or that gcd.

Grid: a series runs from its first to its last timestamp on the frequency's grid. A grid
timestamp absent from the frame is a row with y missing (NaN), like a NaN in ``y``; a
timestamp off the grid is an error naming the series and the timestamp.

Forecast columns: the point forecast in a column named after the model, intervals in
``<model>-lo-<level>`` / ``<model>-hi-<level>`` (statsforecast's order: widest low first).
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from statewise.errors import ArgumentError, ArgumentTypeError, DataError

ID, DS, Y = "unique_id", "ds", "y"


def import_pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise ImportError(
            "the DataFrame API of statewise's forecasting needs pandas: "
            "pip install 'statewise[forecast]'"
        ) from None
    return pandas


def is_dataframe(value: Any) -> bool:
    """True for a pandas DataFrame (without importing pandas: none exists before it is)."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(value, pandas.DataFrame)


def interval_columns(name: str, levels: list[float]) -> list[str]:
    """``name-lo-95, name-lo-80, name-hi-80, name-hi-95`` for levels [80, 95]."""
    lows = [f"{name}-lo-{level:g}" for level in reversed(levels)]
    return lows + [f"{name}-hi-{level:g}" for level in levels]


def is_interval_column(column: str) -> bool:
    return "-lo-" in column or "-hi-" in column


@dataclass
class Gridded:
    """Series on their grid: ids (S,) sorted; starts[s] the timestamp of row 0; rows[s]
    (n_s, C) float64 with NaN where missing, one column per name asked for."""

    ids: np.ndarray
    starts: list[Any]
    rows: list[np.ndarray]

    def lengths(self) -> list[int]:
        return [len(r) for r in self.rows]


def check_frame(df: Any, name: str, columns: list[str], nan_allowed: tuple[str, ...] = ()):
    """``df`` is a DataFrame with ``unique_id``, ``ds`` and numeric ``columns``, no missing
    ids or timestamps, no duplicate (unique_id, ds), no inf, and NaN only in
    ``nan_allowed``; errors name ``name`` and the column."""
    pd = import_pandas()
    if not isinstance(df, pd.DataFrame):
        raise ArgumentTypeError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in (ID, DS, *columns) if c not in df.columns]
    if missing:
        raise DataError(f"{name} lacks the columns {missing}; it has {list(df.columns)}")
    if len(df) == 0:
        raise DataError(f"{name} has no rows")
    for column in (ID, DS):
        if df[column].isna().any():
            raise DataError(f"{name}[{column!r}] has missing values")
    duplicated = df.duplicated([ID, DS])
    if duplicated.any():
        first = python_scalars(df.loc[duplicated, [ID, DS]].iloc[0].tolist())
        raise DataError(
            f"{name} has {int(duplicated.sum())} duplicate (unique_id, ds) rows, e.g. {first}"
        )
    for column in columns:
        series = df[column]
        if not (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)):
            raise ArgumentTypeError(f"{name}[{column!r}] must be numeric, got dtype {series.dtype}")
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isinf(values).any():
            raise DataError(f"{name}[{column!r}] has infinite values")
        if column not in nan_allowed and np.isnan(values).any():
            raise DataError(f"{name}[{column!r}] has missing values; only y may be missing (NaN)")


def resolve_freq(df: Any, freq: Any) -> Any:
    """The frequency of ``df``'s ``ds``: a pandas offset for datetimes, an int for integers."""
    pd = import_pandas()
    ds = df[DS]
    if pd.api.types.is_integer_dtype(ds):
        if freq is not None:
            if isinstance(freq, bool) or not isinstance(freq, int) or freq <= 0:
                raise ArgumentError(f"freq must be a positive int for integer ds, got {freq!r}")
            return freq
        return _gcd_step(df, lambda v: v.astype(np.int64))
    if not pd.api.types.is_datetime64_any_dtype(ds):
        raise ArgumentTypeError(
            f"ds must hold datetimes or integers, got dtype {ds.dtype} "
            "(convert with pandas.to_datetime)"
        )
    if freq is not None:
        try:
            return pd.tseries.frequencies.to_offset(freq)
        except (ValueError, TypeError):
            raise ArgumentError(f"freq {freq!r} is not a pandas frequency") from None
    inferred = set()
    for _, stamps in df.groupby(ID, sort=False)[DS]:
        if len(stamps) >= 3:
            with warnings.catch_warnings():  # pandas 3 announces an offset instead of a str
                warnings.filterwarnings("ignore", message="A future version of pandas")
                found = pd.infer_freq(pd.DatetimeIndex(stamps).sort_values())
            if found is not None:
                inferred.add(pd.tseries.frequencies.to_offset(found))
    if len(inferred) > 1:
        raise DataError(
            f"the series have different frequencies {sorted(o.freqstr for o in inferred)}; "
            "pass freq= to choose one"
        )
    if inferred:
        return inferred.pop()
    step = _gcd_step(df, lambda v: v.astype("datetime64[ns]").astype(np.int64))
    return pd.tseries.frequencies.to_offset(pd.Timedelta(step, unit="ns"))


def python_scalars(values: list[Any]) -> list[Any]:
    """numpy scalars as Python's (for JSON and for readable messages)."""
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def check_ds_kind(df: Any, name: str, freq: Any) -> None:
    """``df``'s ds holds integers for an int ``freq`` and datetimes otherwise."""
    integer = import_pandas().api.types.is_integer_dtype(df[DS])
    if integer != isinstance(freq, int):
        wanted = "integers" if isinstance(freq, int) else "datetimes"
        raise ArgumentTypeError(
            f"{name}['ds'] must hold {wanted}, as the training frame's did; got dtype "
            f"{df[DS].dtype}"
        )


def _gcd_step(df: Any, as_int: Any) -> int:
    step = 0
    for _, stamps in df.groupby(ID, sort=False)[DS]:
        values = np.sort(as_int(stamps.to_numpy()))
        for d in np.unique(np.diff(values)):
            step = math.gcd(step, int(d))
    if step <= 0:
        raise DataError("cannot infer the frequency: every series has one timestamp; pass freq=")
    return step


def freq_to_json(freq: Any) -> Any:
    return freq if isinstance(freq, int) else freq.freqstr


def freq_from_json(value: Any) -> Any:
    return value if isinstance(value, int) else import_pandas().tseries.frequencies.to_offset(value)


def timestamps(start: Any, count: int, freq: Any, skip: int = 0) -> Any:
    """The grid timestamps skip .. skip + count - 1 steps after ``start``."""
    if isinstance(freq, int):
        return start + freq * np.arange(skip, skip + count)
    return import_pandas().date_range(start, periods=skip + count, freq=freq)[skip:]


def to_grid(df: Any, freq: Any, columns: list[str]) -> Gridded:
    """The series of ``df`` on their grid, ``columns`` as arrays (see the module doc)."""
    pd = import_pandas()
    frame = df[[ID, DS, *columns]].sort_values([ID, DS], kind="stable")
    codes, ids = pd.factorize(frame[ID], sort=True)
    stamps = frame[DS].to_numpy()
    values = frame[columns].to_numpy(dtype=np.float64, na_value=np.nan)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(codes)) + 1, [len(codes)]])
    starts, rows = [], []
    for i in range(len(bounds) - 1):
        lo, hi = bounds[i], bounds[i + 1]
        positions = _grid_positions(stamps[lo:hi], freq, ids[i])
        grid = np.full((positions[-1] + 1, len(columns)), np.nan)
        grid[positions] = values[lo:hi]
        starts.append(stamps[lo] if isinstance(freq, int) else pd.Timestamp(stamps[lo]))
        rows.append(grid)
    return Gridded(np.asarray(ids), starts, rows)


def _grid_positions(stamps: np.ndarray, freq: Any, series: Any) -> np.ndarray:
    if isinstance(freq, int):
        offsets = stamps.astype(np.int64) - int(stamps[0])
        off = offsets % freq != 0
        positions = offsets // freq
    else:
        pd = import_pandas()
        grid = pd.date_range(stamps[0], stamps[-1], freq=freq)
        positions = grid.get_indexer(pd.DatetimeIndex(stamps))
        off = positions < 0
    if off.any():
        bad, first = stamps[off][0], stamps[0]
        if not isinstance(freq, int):
            bad, first = import_pandas().Timestamp(bad), import_pandas().Timestamp(first)
        raise DataError(
            f"series {series!r}: ds {bad} is not on the grid of frequency "
            f"{freq_to_json(freq)!r} from its first timestamp {first}; pass freq= if the "
            "inferred one is wrong"
        )
    return positions


def future_rows(
    futr_df: Any, gridded: Gridded, horizon: int, freq: Any, columns: list[str]
) -> list[np.ndarray]:
    """For each series, the (horizon, len(columns)) values of ``futr_df`` at the next
    ``horizon`` grid timestamps after its last row; an error names what is missing."""
    pd = import_pandas()
    if futr_df is None:
        raise DataError(
            f"futr_df is required: the model uses the future-known covariates {columns}; "
            f"give their values for the next {horizon} steps of every series"
        )
    check_frame(futr_df, "futr_df", columns)
    wanted = pd.DataFrame(
        {
            ID: np.repeat(gridded.ids, horizon),
            DS: np.concatenate(
                [timestamps(s, horizon, freq, len(r)) for s, r in zip(gridded.starts, gridded.rows)]
            ),
        }
    )
    given = futr_df[[ID, DS, *columns]].copy()
    if not isinstance(freq, int):
        wanted[DS] = wanted[DS].astype(given[DS].dtype)
    merged = wanted.merge(given, on=[ID, DS], how="left", indicator=True)
    absent = merged["_merge"] == "left_only"
    if absent.any():
        first = merged.loc[absent, [ID, DS]].iloc[0].tolist()
        raise DataError(
            f"futr_df lacks {int(absent.sum())} of the {len(wanted)} rows the horizon needs "
            f"(the next {horizon} steps after each series' last timestamp), e.g. "
            f"unique_id={first[0]!r}, ds={first[1]}"
        )
    values = merged[columns].to_numpy(dtype=np.float64)
    return list(values.reshape(len(gridded.ids), horizon, len(columns)))


def static_rows(static_df: Any, ids: np.ndarray, columns: list[str]) -> np.ndarray:
    """(len(ids), len(columns)) static features, one row per id, in the order of ``ids``."""
    pd = import_pandas()
    if not isinstance(static_df, pd.DataFrame):
        raise ArgumentTypeError(
            f"static_df must be a pandas DataFrame with unique_id and {columns}, "
            f"got {type(static_df).__name__}"
        )
    lacking = [c for c in (ID, *columns) if c not in static_df.columns]
    if lacking:
        raise DataError(f"static_df lacks the columns {lacking}")
    if static_df[ID].duplicated().any():
        raise DataError("static_df has more than one row for a unique_id")
    table = static_df.set_index(ID)[columns]
    absent = [i for i in ids if i not in table.index]
    if absent:
        raise DataError(f"static_df has no row for the series {absent[:5]}")
    values = np.array(table.loc[list(ids)].to_numpy(dtype=np.float64, na_value=np.nan))
    if not np.isfinite(values).all():
        raise DataError("static_df has missing or infinite values")
    return values


def forecast_frame(ids: np.ndarray, stamps: list[Any], columns: dict[str, Any]) -> Any:
    """A long DataFrame: ``unique_id`` repeated per row, ``ds`` concatenated, then
    ``columns`` (arrays or tensors, flattened to one value per row)."""
    pd = import_pandas()
    counts = [len(s) for s in stamps]
    frame = {ID: np.repeat(ids, counts), DS: np.concatenate([np.asarray(s) for s in stamps])}
    frame.update({name: np.asarray(values).reshape(-1) for name, values in columns.items()})
    return pd.DataFrame(frame)
