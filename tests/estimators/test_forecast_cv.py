"""Backtesting: cross_validation's cutoffs, rows and refits, its agreement with predict from
the same history, evaluate_cv on it, and the calibration of the default head's intervals on
series with known Gaussian noise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from statewise import Forecaster
from statewise.errors import ArgumentTypeError, DataError
from statewise.estimators.forecast.metrics import evaluate_cv
from tests.estimators.test_forecast_dataframe_api import TINY, sine_panel

pytestmark = pytest.mark.usefixtures("one_thread")

H = TINY["horizon"]
DF = sine_panel([80, 60], ["2021-01-01", "2021-01-03 07:00"])[["unique_id", "ds", "y", "promo"]]


@pytest.fixture
def fitted_until(monkeypatch) -> list[list]:
    """Every Forecaster.fit call records its training frame's last ds per series."""
    seen = []
    fit = Forecaster.fit

    def recording_fit(self, train, *args, **kwargs):
        seen.append(train.groupby("unique_id").ds.max().tolist())
        return fit(self, train, *args, **kwargs)

    monkeypatch.setattr(Forecaster, "fit", recording_fit)
    return seen


def test_cutoffs_rows_and_agreement_with_predict(fitted_until):
    f = Forecaster(**TINY, futr_exog_list=["promo"])
    cv = f.cross_validation(
        DF, h=4, n_windows=3, step_size=2, level=[80], max_steps=5, progress=False
    )
    assert list(cv.columns) == ["unique_id", "ds", "cutoff", "y", "lru", "lru-lo-80", "lru-hi-80"]
    assert len(cv) == 2 * 3 * 4
    for uid, part in cv.groupby("unique_id"):
        series = DF[DF.unique_id == uid].reset_index(drop=True)
        n = len(series)
        cutoffs = sorted(part.cutoff.unique())
        # window k ends at the series' end minus (n_windows - 1 - k) * step_size
        assert cutoffs == [series.ds[n - 4 - 2 * j - 1] for j in (2, 1, 0)]
        for cutoff, window in part.groupby("cutoff"):
            start = series.index[series.ds == cutoff][0] + 1
            assert window.ds.tolist() == series.ds[start : start + 4].tolist()
            assert window.y.tolist() == series.y[start : start + 4].tolist()
    # fitted once, on the rows up to each series' first cutoff
    assert fitted_until == [cv.groupby("unique_id").cutoff.min().tolist()]
    # afterwards predict() continues every series from the end of DF (the weights of the fit)
    future = sine_panel([80 + H, 60 + H], ["2021-01-01", "2021-01-03 07:00"])
    future = future[future.ds > future.unique_id.map(DF.groupby("unique_id").ds.max())]
    after = f.predict(futr_df=future)
    assert after.ds.tolist() == future.ds.tolist()
    pd.testing.assert_frame_equal(after, f.predict(DF, futr_df=future))
    # the last window equals predict from the history up to its cutoff
    last = DF.unique_id.map(cv.groupby("unique_id").cutoff.max())
    expected = f.predict(DF[DF.ds <= last], h=4, futr_df=DF[DF.ds > last], level=[80])
    got = cv[cv.cutoff == cv.groupby("unique_id").cutoff.transform("max")]
    np.testing.assert_allclose(got.lru.to_numpy(), expected.lru.to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(got["lru-hi-80"], expected["lru-hi-80"], rtol=1e-5)


def test_refit_fits_once_per_window(fitted_until):
    f = Forecaster(**TINY)
    seen = fitted_until
    cv = f.cross_validation(
        DF[["unique_id", "ds", "y"]], n_windows=2, refit=True, max_steps=2, progress=False
    )
    assert len(seen) == 2 and all(a < b for a, b in zip(*seen))  # later cutoffs each time
    assert sorted(cv.cutoff.unique()) == sorted(set(seen[0]) | set(seen[1]))
    seen.clear()
    f.cross_validation(DF[["unique_id", "ds", "y"]], n_windows=2, max_steps=2, progress=False)
    assert len(seen) == 1


def test_cross_validation_errors():
    f = Forecaster(**TINY)
    with pytest.raises(DataError, match=r"series \['s1'\] are too short for 10 windows"):
        f.cross_validation(DF[["unique_id", "ds", "y"]], n_windows=10, max_steps=1)
    with pytest.raises(ArgumentTypeError, match="df must be a long pandas DataFrame"):
        f.cross_validation(np.zeros(50))


def test_intervals_of_the_default_head_cover_as_stated_on_known_noise():
    """sigma = 0.5 Gaussian noise around daily sines: the 80 % interval of a fitted default
    Forecaster covers 70-90 % of 480 held-out points (measured: 79.8 %), and its CRPS comes
    within 40 % of the CRPS of the true distribution, sigma / sqrt(pi) = 0.282."""
    sigma, frames = 0.5, []
    rng = np.random.default_rng(0)
    for i in range(4):
        n = 600 + 50 * i
        t = np.arange(n)
        frames.append(
            pd.DataFrame(
                {
                    "unique_id": i,
                    "ds": pd.date_range("2021-01-01", periods=n, freq="h"),
                    "y": 2 * np.sin(2 * np.pi * t / 24 + i) + sigma * rng.normal(size=n),
                }
            )
        )
    df = pd.concat(frames, ignore_index=True)
    f = Forecaster(input_len=48, horizon=12, d_model=16, n_layers=1, batch_size=64, lr=3e-3)
    cv = f.cross_validation(df, n_windows=10, level=[80], max_steps=600, progress=False)
    table = evaluate_cv(cv).set_index(["unique_id", "metric"])["lru"]
    assert len(cv) == 480
    assert 0.70 <= table["overall", "coverage-80"] <= 0.90, table
    scores = f.evaluate(df.groupby("unique_id").tail(120 + 48))  # the same held-out rows
    crps = scores["crps"] * float(f.frame.scale[:, 0].mean())  # back to the data's units
    # measured 0.349 = 1.24 x the oracle's 0.282 (this 1-layer d16 model after 600 steps has
    # an MSE of 1.46 sigma^2); 1.4 x leaves room for other CPUs' rounding, and still fails
    # if evaluate's CRPS were not in the scaled units (x 1.5 here) or ignored the sine
    assert crps < 1.4 * sigma / np.sqrt(np.pi), scores
