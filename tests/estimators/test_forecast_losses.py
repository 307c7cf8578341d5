"""The Forecaster's output families: losses against scipy's log-densities and hand loops,
quantiles against scipy's inverse CDFs, units (affine maps), masking of missing targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from statewise.errors import ArgumentError, ArgumentTypeError
from statewise.estimators.forecast.losses import check_levels, level_probabilities, make_family

stats = pytest.importorskip("scipy.stats")

PROBS = [0.025, 0.1, 0.5, 0.9, 0.975]


def _raw(n_params: int, shape=(4, 3), seed=0) -> torch.Tensor:
    return torch.randn(*shape, n_params, generator=torch.Generator().manual_seed(seed)).double()


def test_normal_and_studentt_losses_are_masked_mean_nll():
    target = torch.randn(4, 3, dtype=torch.float64)
    observed = torch.rand(4, 3, generator=torch.Generator().manual_seed(1)) > 0.3
    target_with_gaps = torch.where(observed, target, torch.tensor(float("nan")))
    for name in ("normal", "studentt"):
        family = make_family(name, [80])
        params = family.constrain(_raw(family.n_params))
        loc, scale = params[..., 0].numpy(), params[..., 1].numpy()
        if name == "normal":
            logpdf = stats.norm.logpdf(target.numpy(), loc, scale)
        else:
            logpdf = stats.t.logpdf(target.numpy(), params[..., 2].numpy(), loc, scale)
        expected = -logpdf[observed.numpy()].mean()
        got = family.loss(params, target_with_gaps, observed)  # NaN where not observed
        assert float(got) == pytest.approx(expected, rel=1e-12)


def test_constraints_keep_parameters_valid():
    raw = torch.tensor([[0.0, -50.0, -50.0], [1.0, 50.0, 50.0]], dtype=torch.float64)
    params = make_family("studentt", [80]).constrain(raw)
    assert (params[:, 1] > 0).all() and (params[:, 2] >= 2).all()  # 2 + softplus(-50) rounds
    assert params[1, 2] == pytest.approx(52.0)  # df = 2 + softplus(50)


def test_quantiles_match_scipy():
    normal, student = make_family("normal", [80]), make_family("studentt", [80])
    p = normal.constrain(_raw(2))
    np.testing.assert_allclose(
        normal.quantiles(p, PROBS).numpy(),
        stats.norm.ppf(PROBS, p[..., :1].numpy(), p[..., 1:2].numpy()),
        rtol=1e-9,
    )
    p = student.constrain(_raw(3))
    ref = stats.t.ppf(PROBS, p[..., 2:3].numpy(), p[..., :1].numpy(), p[..., 1:2].numpy())
    np.testing.assert_allclose(student.quantiles(p, PROBS).numpy(), ref, rtol=1e-8)
    # unpaired probabilities, in any order (the two ends of an interval share one solve)
    odd = [0.95, 0.3, 0.5, 0.05, 0.6]
    ref = stats.t.ppf(odd, p[..., 2:3].numpy(), p[..., :1].numpy(), p[..., 1:2].numpy())
    np.testing.assert_allclose(student.quantiles(p, odd).numpy(), ref, rtol=1e-8)


def test_negative_binomial_loss_and_quantiles_match_scipy():
    family = make_family("negbin", [80])
    raw = torch.tensor([[2.0, -1.0], [0.1, 0.5], [30.0, -3.0]], dtype=torch.float64)
    params = family.constrain(raw)
    mu, alpha = family.mean(params).numpy(), params[:, 1].numpy()
    n, p = 1 / alpha, 1 / (1 + alpha * mu)  # scipy's nbinom: mean n (1 - p) / p = mu
    counts = torch.tensor([3.0, 0.0, 25.0], dtype=torch.float64)
    expected = -stats.nbinom.logpmf(counts.numpy(), n, p).mean()
    got = family.loss(params, counts, torch.ones(3, dtype=torch.bool))
    assert float(got) == pytest.approx(expected, rel=1e-10)
    ref = stats.nbinom.ppf(np.array(PROBS)[None], n[:, None], p[:, None])
    np.testing.assert_array_equal(family.quantiles(params, PROBS).numpy(), ref)


def test_quantile_family_is_monotone_and_its_loss_is_the_pinball_loss():
    family = make_family("quantile", [80, 95])
    assert family.probs == PROBS and family.n_params == 5
    params = family.constrain(_raw(5, shape=(200,)) * 3)
    assert (params.diff(dim=-1) > 0).all()
    target = torch.randn(200, dtype=torch.float64)
    observed = torch.ones(200, dtype=torch.bool)
    expected = np.mean(
        [
            np.mean([max(p * (y - q), (p - 1) * (y - q)) for p, q in zip(PROBS, row)])
            for y, row in zip(target.tolist(), params.tolist())
        ]
    )
    assert float(family.loss(params, target, observed)) == pytest.approx(expected, rel=1e-12)
    assert torch.equal(family.mean(params), params[:, 2])
    np.testing.assert_array_equal(family.quantiles(params, [0.1, 0.9]), params[:, [1, 3]])
    with pytest.raises(ArgumentError, match=r"trained for the levels \[80.0, 95.0\]"):
        family.quantiles(params, [0.25])


@pytest.mark.parametrize("name", ["normal", "studentt", "quantile"])
def test_affine_maps_move_quantiles_and_means_between_units(name):
    family = make_family(name, [80, 95])
    params = family.constrain(_raw(family.n_params))
    shift, scale = torch.tensor(3.0).double(), torch.tensor(2.5).double()
    moved = family.affine(params, shift, scale)
    np.testing.assert_allclose(
        family.quantiles(moved, PROBS), family.quantiles(params, PROBS) * 2.5 + 3, rtol=1e-12
    )
    np.testing.assert_allclose(family.mean(moved), family.mean(params) * 2.5 + 3, rtol=1e-12)


def test_point_only_loss_refuses_levels_and_levels_are_checked():
    family = make_family("mse", [80])
    params = torch.zeros(2, 1)
    with pytest.raises(ArgumentError, match="loss='mse' gives point forecasts only"):
        family.quantiles(params, [0.1, 0.9])
    assert check_levels(95) == (95.0,) and check_levels([95, 80, 80]) == (80.0, 95.0)
    assert level_probabilities([80, 95]) == pytest.approx([0.025, 0.1, 0.9, 0.975])
    with pytest.raises(ArgumentError, match="level values must lie in"):
        check_levels([0])
    with pytest.raises(ArgumentTypeError, match="level must"):
        check_levels("80")
    with pytest.raises(ArgumentError, match="loss must be one of"):
        make_family("poisson", [80])


@pytest.mark.parametrize("name", ["normal", "studentt", "quantile", "mse"])
def test_adding_to_the_raw_location_shifts_the_distribution_by_that_much(name):
    """linear_skip adds its forecast to raw[..., raw_location]: that must move the mean and
    every quantile by the same amount and leave the scale and shape alone."""
    family = make_family(name, [80, 95])
    raw = _raw(family.n_params)
    shifted = raw.clone()
    shifted[..., family.raw_location] += 0.75
    before, after = family.constrain(raw), family.constrain(shifted)
    np.testing.assert_allclose(family.mean(after), family.mean(before) + 0.75, rtol=1e-12)
    if name != "mse":
        np.testing.assert_allclose(
            family.quantiles(after, PROBS), family.quantiles(before, PROBS) + 0.75, rtol=1e-12
        )
    assert make_family("negbin", [80]).raw_location is None  # a mean in the counts' units


@pytest.mark.parametrize("name", ["normal", "studentt"])
@pytest.mark.parametrize("level", [50, 80, 95])
def test_covers_reads_the_quantile_interval_through_the_cdf(name, level):
    """covers() of normal and Student-t (one CDF evaluation) agrees with membership of the
    quantile interval (the base class's rule), also for targets a hair inside or outside
    either bound, and with scipy's CDF."""
    family = make_family(name, [level])
    params = family.constrain(_raw(family.n_params, shape=(200,), seed=3))
    low, high = family.quantiles(params, level_probabilities([level])).unbind(-1)
    hair = 1e-6 * params[..., 1]
    targets = torch.cat(
        [
            torch.randn(200, generator=torch.Generator().manual_seed(5)).double() * 3,
            low - hair,
            low + hair,
            high - hair,
            high + hair,
        ]
    )
    params = params.repeat(5, 1)
    quantile_rule = super(type(family), family).covers(params, targets, level)
    got = family.covers(params, targets, level)
    assert torch.equal(got, quantile_rule)
    below, above_low, below_high, above = got[200:].view(4, 200)
    assert above_low.all() and below_high.all() and not below.any() and not above.any()
    loc, scale = params[..., 0].numpy(), params[..., 1].numpy()
    if name == "normal":
        cdf = stats.norm.cdf(targets.numpy(), loc, scale)
    else:
        cdf = stats.t.cdf(targets.numpy(), params[..., 2].numpy(), loc, scale)
    lo, hi = level_probabilities([level])
    np.testing.assert_array_equal(got.numpy(), (cdf >= lo) & (cdf <= hi))


@pytest.mark.parametrize("name", ["quantile", "negbin"])
def test_covers_of_the_other_families_compares_with_their_quantiles(name):
    family = make_family(name, [80])
    params = family.constrain(_raw(family.n_params, shape=(50,), seed=4))
    low, high = family.quantiles(params, level_probabilities([80])).unbind(-1)
    targets = torch.cat([low, high, low - 1, high + 1, (low + high) / 2])
    at_low, at_high, below, above, middle = family.covers(params.repeat(5, 1), targets, 80).view(
        5, 50
    )
    assert at_low.all() and at_high.all() and middle.all()  # bounds included
    assert not below.any() and not above.any()
