"""Forecast metrics and the Student-t quantile solver against independent references:
scipy's distributions, brute-force numerical integration of the CRPS, hand computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from statewise.errors import ArgumentError, DataError
from statewise.estimators.forecast.metrics import (
    coverage,
    crps_normal,
    crps_quantiles,
    crps_samples,
    crps_studentt,
    evaluate_cv,
    mae,
    mase,
    midpoint_probabilities,
    mse,
)
from statewise.estimators.forecast.studentt import studentt_cdf, studentt_icdf

stats = pytest.importorskip("scipy.stats")
integrate = pytest.importorskip("scipy.integrate")

CASES = [(0.3, 0.0, 1.0, 3.0), (2.5, 1.0, 0.5, 2.2), (-4.0, 0.5, 2.0, 10.0), (0.0, 0.0, 1.0, 50.0)]


def brute_force_crps(cdf, y: float) -> float:
    """integral (F(x) - 1{x >= y})^2 dx by adaptive quadrature, split at y."""

    def f(x):
        return (cdf(x) - (x >= y)) ** 2

    left = integrate.quad(f, -np.inf, y, limit=500, epsabs=1e-12)[0]
    return left + integrate.quad(f, y, np.inf, limit=500, epsabs=1e-12)[0]


def t64(*values):
    return [torch.tensor(v, dtype=torch.float64) for v in values]


def test_studentt_quantiles_and_cdf_match_scipy():
    p = torch.tensor([1e-6, 0.001, 0.025, 0.1, 0.3, 0.5, 0.7, 0.9, 0.975, 0.999, 1 - 1e-6])
    for df in (1.0, 2.0, 2.5, 5.0, 30.0, 1e3):
        got = studentt_icdf(p.double(), torch.tensor(df)).numpy()
        ref = stats.t.ppf(p.double().numpy(), df)
        np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-9)
        x = torch.linspace(-30, 30, 61, dtype=torch.float64)
        np.testing.assert_allclose(
            studentt_cdf(x, torch.tensor(df)).numpy(), stats.t.cdf(x.numpy(), df), atol=1e-11
        )
    # elementwise degrees of freedom, broadcast against p
    df = torch.tensor([2.1, 4.0, 9.0], dtype=torch.float64)
    got = studentt_icdf(torch.tensor([[0.05], [0.95]], dtype=torch.float64), df)
    np.testing.assert_allclose(got.numpy(), stats.t.ppf([[0.05], [0.95]], df.numpy()), rtol=1e-9)
    with pytest.raises(ArgumentError, match="p must lie"):
        studentt_icdf(torch.tensor([0.0]), torch.tensor(3.0))
    with pytest.raises(ArgumentError, match="df must be >= 1"):
        studentt_icdf(torch.tensor([0.5]), torch.tensor(0.5))


@pytest.mark.parametrize("y, loc, scale, df", CASES)
def test_crps_closed_forms_equal_numerical_integration(y, loc, scale, df):
    ref_t = brute_force_crps(lambda x: stats.t.cdf(x, df, loc, scale), y)
    assert float(crps_studentt(*t64(y, loc, scale, df))) == pytest.approx(ref_t, rel=1e-7)
    ref_n = brute_force_crps(lambda x: stats.norm.cdf(x, loc, scale), y)
    assert float(crps_normal(*t64(y, loc, scale))) == pytest.approx(ref_n, rel=1e-9)


@pytest.mark.parametrize("y, loc, scale, df", CASES)
def test_crps_estimators_converge_to_the_integral(y, loc, scale, df):
    ref = brute_force_crps(lambda x: stats.t.cdf(x, df, loc, scale), y)
    # quantile estimator: midpoint rule over p; error O(1/Q) from the tails' quantiles
    probs = midpoint_probabilities(2000)
    q = torch.tensor(stats.t.ppf(probs, df, loc, scale))
    est = float(crps_quantiles(torch.tensor(y, dtype=torch.float64), q, probs))
    assert est == pytest.approx(ref, rel=2e-3)
    # sample estimator: 40,000 draws; its standard error here is below 1 % of the CRPS
    draws = torch.tensor(stats.t.rvs(df, loc, scale, size=40_000, random_state=1))
    est = float(crps_samples(torch.tensor(y, dtype=torch.float64), draws))
    assert est == pytest.approx(ref, rel=0.03)


def test_crps_samples_pair_sum_equals_the_quadratic_definition():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3, 50)), rng.normal(size=3)
    pairs = np.abs(x[:, :, None] - x[:, None, :]).mean(axis=(1, 2))
    ref = np.abs(x - y[:, None]).mean(1) - 0.5 * pairs
    np.testing.assert_allclose(crps_samples(torch.tensor(y), torch.tensor(x)).numpy(), ref)


def test_point_metrics_by_hand_skip_missing_targets():
    y = np.array([1.0, np.nan, 3.0, 5.0])
    yhat = np.array([2.0, 100.0, 3.0, 2.0])
    assert mse(y, yhat) == pytest.approx((1 + 0 + 9) / 3)
    assert mae(y, yhat) == pytest.approx((1 + 0 + 3) / 3)
    # in-sample seasonal naive (m = 2) of [1, 2, 4, 8, nan, 9]: |4-1|, |8-2|, |9-8| (nan out)
    insample = [1.0, 2.0, 4.0, 8.0, np.nan, 9.0]
    assert mase(y, yhat, insample, 2) == pytest.approx((4 / 3) / ((3 + 6 + 1) / 3))
    assert coverage(y, [0.0, 0.0, 3.5, 4.0], [1.0, 0.0, 4.0, 6.0]) == pytest.approx(2 / 3)
    with pytest.raises(DataError, match="mase"):
        mase(y, yhat, [2.0, 2.0, 2.0], 1)


def test_evaluate_cv_per_series_and_overall():
    cv = pd.DataFrame(
        {
            "unique_id": ["a"] * 3 + ["b"] * 3,
            "ds": list(range(3, 6)) * 2,
            "cutoff": [2] * 6,
            "y": [1.0, 2.0, np.nan, 0.0, 0.0, 4.0],
            "m": [1.5, 2.0, 7.0, 1.0, -1.0, 4.0],
            "m-lo-80": [1.2, 1.0, 0.0, -2.0, 0.5, 3.0],
            "m-hi-80": [2.0, 3.0, 9.0, 2.0, 1.0, 5.0],
        }
    )
    train = pd.DataFrame(
        {
            "unique_id": ["a"] * 4 + ["b"] * 3,
            "ds": [0, 1, 2, 3, 0, 1, 2],
            "y": [0, 1, 3, 99, 0, 2, 2.0],
        }
    )
    table = evaluate_cv(cv, train, season_length=1)
    got = table.set_index(["unique_id", "metric"])["m"]
    assert got["a", "mse"] == pytest.approx((0.25 + 0) / 2)
    assert got["a", "mae"] == pytest.approx(0.25)
    assert got["a", "mase"] == pytest.approx(0.25 / 1.5)  # train rows up to the cutoff (ds <= 2)
    # season 2: a's in-sample naive error |3 - 0| = 3 (b's |2 - 0| = 2)
    seasonal = evaluate_cv(cv, train, season_length=2).set_index(["unique_id", "metric"])["m"]
    assert seasonal["a", "mase"] == pytest.approx(0.25 / 3)
    assert seasonal["b", "mase"] == pytest.approx(got["b", "mae"] / 2)
    assert got["a", "coverage-80"] == pytest.approx(0.5)  # 1.0 < lo 1.2; 2.0 inside
    assert got["b", "coverage-80"] == pytest.approx(2 / 3)

    # crps: 2 x mean pinball over the quantiles 0.1 (lo), 0.5 (point), 0.9 (hi)
    def pinball(y, q, p):
        return max(p * (y - q), (p - 1) * (y - q))

    rows_a = [(1.0, 1.2, 1.5, 2.0), (2.0, 1.0, 2.0, 3.0)]
    crps_a = np.mean(
        [2 * np.mean([pinball(y, lo, 0.1), pinball(y, m, 0.5), pinball(y, hi, 0.9)])
         for y, lo, m, hi in rows_a]
    )  # fmt: skip
    assert got["a", "crps"] == pytest.approx(crps_a)
    for metric in ("mse", "mae", "mase", "coverage-80", "crps"):
        assert got["overall", metric] == pytest.approx((got["a", metric] + got["b", metric]) / 2)
    with pytest.raises(DataError, match="no forecast column"):
        evaluate_cv(cv[["unique_id", "ds", "cutoff", "y"]])


def test_normal_crps_of_the_true_distribution_is_sigma_over_sqrt_pi():
    """E[CRPS(N(0, s), Y)] for Y ~ N(0, s) is s / sqrt(pi): a check of the scale factor."""
    y = torch.tensor(stats.norm.rvs(0, 2.0, size=200_000, random_state=3))
    got = float(crps_normal(y, torch.zeros(()), torch.tensor(2.0)).mean())
    assert got == pytest.approx(2.0 / math.sqrt(math.pi), rel=0.01)
