"""Long DataFrames -> series on a time grid -> panels and windows: frequencies, gaps,
calendar features, scaling statistics, checks of the frames, lazy pandas."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from statewise.errors import ArgumentTypeError, DataError
from statewise.estimators.forecast.calendar import calendar_features, calendar_names, season_of
from statewise.estimators.forecast.frame import (
    check_frame,
    future_rows,
    import_pandas,
    resolve_freq,
    to_grid,
)
from statewise.estimators.forecast.panel import make_panel
from statewise.tasks.forecast import series_statistics


def frame(ids, starts, lengths, freq="h", values=None) -> pd.DataFrame:
    parts = []
    for uid, start, n in zip(ids, starts, lengths):
        ds = pd.date_range(start, periods=n, freq=freq)
        y = np.arange(n, dtype=float) if values is None else values(n)
        parts.append(pd.DataFrame({"unique_id": uid, "ds": ds, "y": y}))
    return pd.concat(parts, ignore_index=True)


def test_frequency_inference_and_the_grid_of_series_with_gaps():
    df = frame(["b", "a"], ["2020-01-01 05:00", "2020-01-03"], [6, 4])
    assert resolve_freq(df, None) == pd.tseries.frequencies.to_offset("h")
    gappy = df.drop(index=[2, 3]).reset_index(drop=True)  # b loses its 3rd and 4th hours
    assert resolve_freq(gappy, None).freqstr == "h"  # from series a, which has no gap
    grid = to_grid(gappy, resolve_freq(gappy, None), ["y"])
    assert grid.ids.tolist() == ["a", "b"]  # sorted
    assert grid.starts[1] == pd.Timestamp("2020-01-01 05:00")
    np.testing.assert_array_equal(grid.rows[1][:, 0], [0, 1, np.nan, np.nan, 4, 5])
    only_gaps = gappy[gappy.unique_id == "b"]  # no series infers: the gcd of the steps
    assert resolve_freq(only_gaps, None).freqstr == "h"
    ints = pd.DataFrame({"unique_id": 1, "ds": [10, 14, 20], "y": [1.0, 2.0, 3.0]})
    assert resolve_freq(ints, None) == 2
    np.testing.assert_array_equal(
        to_grid(ints, 2, ["y"]).rows[0][:, 0], [1, np.nan, 2, np.nan, np.nan, 3]
    )


def test_grid_errors_name_the_series_and_timestamp():
    df = frame(["a", "b"], ["2020-01-01", "2020-01-01"], [5, 5])
    daily = frame(["c"], ["2020-01-01"], [5], freq="D")
    with pytest.raises(DataError, match="different frequencies"):
        resolve_freq(pd.concat([df, daily]), None)
    off = df.copy()
    off.loc[7, "ds"] = pd.Timestamp("2020-01-01 02:30")
    with pytest.raises(DataError, match=r"series 'b': ds 2020-01-01 02:30:00 is not on the grid"):
        to_grid(off, pd.tseries.frequencies.to_offset("h"), ["y"])
    with pytest.raises(ArgumentTypeError, match="ds must hold datetimes or integers"):
        resolve_freq(df.assign(ds=df.ds.astype(str)), None)


def test_check_frame_errors_name_the_column():
    df = frame(["a"], ["2020-01-01"], [5]).assign(x=1.0, name="n")
    with pytest.raises(DataError, match=r"train lacks the columns \['z'\]"):
        check_frame(df, "train", ["y", "z"])
    with pytest.raises(ArgumentTypeError, match=r"train\['name'\] must be numeric"):
        check_frame(df, "train", ["y", "name"])
    with pytest.raises(DataError, match=r"train\['x'\] has missing values"):
        check_frame(df.assign(x=[1.0, np.nan, 1, 1, 1]), "train", ["y", "x"], ("y",))
    with pytest.raises(DataError, match="duplicate"):
        check_frame(pd.concat([df, df.iloc[:1]]), "train", ["y"])
    integer_ds = df.assign(ds=np.arange(5))  # the example row reads as Python values
    with pytest.raises(DataError, match=r"1 duplicate \(unique_id, ds\) rows, e\.g\. \['a', 0\]$"):
        check_frame(pd.concat([integer_ds, integer_ds.iloc[:1]]), "train", ["y"])
    with pytest.raises(ArgumentTypeError, match="must be a pandas DataFrame"):
        check_frame({"y": [1]}, "train", ["y"])
    check_frame(df.assign(y=[1.0, np.nan, 1, 1, 1]), "train", ["y"], ("y",))  # y may miss


def test_future_rows_are_read_in_order_and_missing_ones_are_named():
    df = frame(["a", "b"], ["2020-01-01", "2020-01-02"], [3, 2])
    grid = to_grid(df, pd.tseries.frequencies.to_offset("h"), ["y"])
    futr = pd.DataFrame(
        {
            "unique_id": ["b", "b", "a", "a", "a"],
            "ds": pd.to_datetime(
                [
                    "2020-01-02 03:00",
                    "2020-01-02 02:00",
                    "2020-01-01 03:00",
                    "2020-01-01 04:00",
                    "2020-01-01 05:00",
                ]
            ),  # fmt: skip
            "x": [4.0, 3.0, 1.0, 2.0, 9.0],
        }
    )
    rows = future_rows(futr, grid, 2, grid_freq(), ["x"])
    np.testing.assert_array_equal(rows[0][:, 0], [1, 2])
    np.testing.assert_array_equal(rows[1][:, 0], [3, 4])
    with pytest.raises(DataError, match=r"futr_df lacks 1 of the 6 rows .* unique_id='b'"):
        future_rows(futr, grid, 3, grid_freq(), ["x"])
    with pytest.raises(DataError, match=r"futr_df lacks the columns \['w'\]"):
        future_rows(futr, grid, 2, grid_freq(), ["w"])
    with pytest.raises(DataError, match=r"futr_df is required: .* \['x'\]"):
        future_rows(None, grid, 2, grid_freq(), ["x"])


def grid_freq():
    return pd.tseries.frequencies.to_offset("h")


def test_calendar_features_by_frequency_and_value():
    assert calendar_names("h") == [
        f"{c}_{w}" for c in ("hour_of_day", "day_of_week", "day_of_year") for w in ("sin", "cos")
    ]
    assert [n[:-4] for n in calendar_names("D")][::2] == ["day_of_week", "day_of_year"]
    assert [n[:-4] for n in calendar_names("ME")][::2] == ["month_of_year"]
    assert calendar_names("YE") == [] and calendar_names(1) == []
    stamps = pd.DatetimeIndex(["2024-01-03 06:00", "2024-03-01 18:30"])  # Wed, Fri
    got = calendar_features(stamps, calendar_names("15min"))
    hour = [6.0, 18.5]
    dow = [2 + 6 / 24, 4 + 18.5 / 24]
    doy = [2 + 6 / 24, 60 + 18.5 / 24]  # 2024 is a leap year: 1 March is day 61
    minute = [0.0, 30.0]
    expected = []
    for values, period in ((minute, 60), (hour, 24), (dow, 7), (doy, 365.25)):
        angle = [2 * math.pi * v / period for v in values]
        expected += [np.sin(angle), np.cos(angle)]
    np.testing.assert_allclose(got, np.stack(expected, 1), atol=1e-6)
    assert [
        season_of(pd.tseries.frequencies.to_offset(f)) for f in ("h", "D", "B", "W", "MS", "QE")
    ] == [24, 7, 5, 52, 12, 4]  # noqa: E501


def test_series_statistics_leave_missing_values_out():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 2)) * 3 + 1
    x[[3, 7, 11], 0] = np.nan
    shift, scale = series_statistics(torch.tensor(x), "standard")
    np.testing.assert_allclose(shift, np.nanmean(x, 0))
    np.testing.assert_allclose(scale, np.nanstd(x, 0))
    shift, scale = series_statistics(torch.tensor(x), "robust")
    q25, q50, q75 = np.nanpercentile(x, [25, 50, 75], axis=0)
    np.testing.assert_allclose(shift, q50)
    np.testing.assert_allclose(scale, q75 - q25)
    shift, scale = series_statistics(torch.ones(5, 1, dtype=torch.float64), "standard")
    assert shift.item() == 1 and scale.item() == 1  # a constant column: scale 1
    shift, scale = series_statistics(torch.tensor(x), None)
    assert torch.all(shift == 0) and torch.all(scale == 1)


def test_panel_windows_never_cross_series_and_gather_their_rows():
    values = [np.arange(10.0)[:, None], 100 + np.arange(6.0)[:, None]]
    values[0][4] = np.nan
    panel = make_panel(
        values,
        torch.zeros(2, 1, dtype=torch.float64),
        torch.ones(2, 1, dtype=torch.float64),
        [np.zeros((10, 0)), np.zeros((6, 0))],
        [np.arange(10.0)[:, None], np.arange(8.0)[:, None]],  # 2 rows past series 1's end
        torch.zeros(2, 0),
        torch.tensor([0, 1]),
        input_len=3,
    )
    s, c = panel.windows(torch.tensor([1, 1]), panel.lengths - 2, 2)
    for si, ci in zip(s.tolist(), c.tolist()):
        assert 1 <= ci <= len(values[si]) - 2  # targets inside the series
    assert (s == 1).sum() == 4 and (s == 0).sum() == 8  # cutoffs 1..n - 2
    batch = panel.inputs(torch.tensor([0, 1]), torch.tensor([2, 6]), 2)
    assert batch.y[0, :, 0].tolist() == [0.0, 0.0, 1.0]  # one step of padding in front
    assert batch.mask[0].tolist() == [False, True, True] and batch.mask[1].all()
    assert batch.y[1, :, 0].tolist() == [103.0, 104.0, 105.0]
    assert batch.future[1, :, 0].tolist() == [6.0, 7.0]  # future-known rows after the end
    target, observed = panel.targets(torch.tensor([0]), torch.tensor([3]), 2)
    assert observed[0, :, 0].tolist() == [True, False] and target[0, 1, 0] == 0  # NaN -> 0
    # the window whose only target is missing is dropped
    s, c = panel.windows(torch.tensor([4, 1]), torch.tensor([4, 0]), 1)
    assert len(s) == 0


def test_pandas_is_imported_only_on_the_dataframe_path():
    code = (
        "import sys, numpy as np, statewise\n"
        "f = statewise.Forecaster('lru', 8, 2, d_model=8, n_layers=1)\n"
        "f.fit(np.sin(np.arange(40.0)), max_steps=1, progress=False)\n"
        "f.predict(np.zeros(8))\n"
        "assert 'pandas' not in sys.modules, 'pandas was imported'\n"
        "sys.modules['pandas'] = None\n"
        "from statewise.estimators.forecast.frame import import_pandas\n"
        "try:\n    import_pandas()\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'statewise[forecast]'" in out.stdout
    assert import_pandas() is pd
