"""The forecasting networks (statewise.models.forecast_*): per-window normalisation,
DLinear's decomposition, patching, channel independence, padding masks and the closed-form
baselines, each against a reference written from its equations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from statewise.models.config import ModelConfig
from statewise.models.forecast.baselines import RidgeOnLags, SeasonalNaive
from statewise.models.forecast.dlinear import DLinear, moving_average
from statewise.models.forecast.inputs import ForecastInputs, ForecastSpec
from statewise.models.forecast.net import RecurrentForecaster, _patches
from statewise.models.forecast.revin import InstanceNorm
from statewise.tasks.forecast import fit_ridge, ridge_predict, seasonal_naive

L, H = 12, 4


def inputs(y: torch.Tensor, n_extra=0, n_future=0, observed=None, mask=None, n_static=0):
    b = y.shape[0]
    g = torch.Generator().manual_seed(5)
    return ForecastInputs(
        y=y,
        observed=torch.ones_like(y, dtype=torch.bool) if observed is None else observed,
        extra=torch.randn(b, y.shape[1], n_extra, generator=g),
        future=torch.randn(b, H, n_future, generator=g),
        series=torch.arange(b) % 3,
        static=torch.randn(b, n_static, generator=g),
        mask=mask,
    )


def _config() -> ModelConfig:
    return ModelConfig(
        layer="lru", d_model=8, n_layers=1, head="forecaster", vocab_size=0, mlp_ratio=1.0
    )


def recurrent(spec: ForecastSpec) -> RecurrentForecaster:
    torch.manual_seed(0)
    return RecurrentForecaster(spec, _config()).eval()


def test_instance_norm_revin_and_subtract_last_invert_exactly():
    y = torch.randn(3, L, 2, dtype=torch.float64) * 4 + 7
    observed = torch.ones_like(y, dtype=torch.bool)
    observed[0, -1, 0] = False  # the last value missing: subtract_last takes the one before
    observed[1, :, 1] = False  # nothing observed: shift 0, scale 1
    norm = InstanceNorm(2, revin=True, subtract_last=False).double()
    with torch.no_grad():
        norm.log_gamma.copy_(torch.tensor([0.3, -0.2]))
        norm.beta.copy_(torch.tensor([0.5, -1.0]))
    z, shift, scale = norm(y, observed)
    w = observed.double()
    count = w.sum(1)
    zs = (z - norm.beta) / norm.log_gamma.exp() * w  # the standardised observed values
    seen = count > 0
    assert torch.allclose(zs.sum(1)[seen], torch.zeros(1, dtype=torch.float64), atol=1e-12)
    variance = (zs**2).sum(1)[seen] / count[seen]
    assert torch.allclose(variance, torch.ones(1, dtype=torch.float64), atol=1e-5)  # eps 1e-5
    assert torch.allclose((scale * z + shift)[observed], y[observed])  # the map back
    assert torch.all(z[~observed] == 0)
    last = InstanceNorm(2, revin=False, subtract_last=True)
    z, shift, scale = last(y, observed)
    assert shift[0, 0, 0] == y[0, -2, 0] and shift[0, 0, 1] == y[0, -1, 1]
    assert shift[1, 0, 1] == 0 and torch.all(scale == 1)
    assert torch.allclose((z + shift)[observed], y[observed])


def test_moving_average_equals_a_loop_with_edge_padding():
    z = torch.randn(2, 9, 3, dtype=torch.float64)
    for kernel in (1, 4, 5):
        ref = torch.empty_like(z)
        for t in range(9):
            window = [min(max(t + j - (kernel - 1) // 2, 0), 8) for j in range(kernel)]
            ref[:, t] = z[:, window].mean(1)
        assert torch.allclose(moving_average(z, kernel), ref)


def test_dlinear_is_two_linear_maps_of_trend_and_remainder():
    spec = ForecastSpec(input_len=L, horizon=H, n_targets=2, n_params=1)
    model = DLinear(spec, kernel=5).double()
    y = torch.randn(3, L, 2, dtype=torch.float64)
    raw, shift, scale = model(inputs(y))
    trend = moving_average(y, 5)
    for k in range(2):
        expected = model.trend(trend[:, :, k]) + model.seasonal(y[:, :, k] - trend[:, :, k])
        assert torch.allclose(raw[:, :, k, 0], expected)
    assert torch.all(shift == 0) and torch.all(scale == 1)


def test_patches_end_at_the_last_step_and_mask_padding():
    tokens = torch.arange(2 * 7 * 2, dtype=torch.float64).view(2, 7, 2)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, :3] = False
    patches, pmask = _patches(tokens, mask, patch_len=3, stride=2)
    # 7 steps, patch 3, stride 2: the last patch ends at step 6, so patches start at 0, 2, 4
    assert patches.shape == (2, 3, 6)
    for i, start in enumerate((0, 2, 4)):
        assert torch.equal(patches[:, i], tokens[:, start : start + 3].reshape(2, 6))
    assert pmask[1].tolist() == [False, True, True] and pmask[0].all()
    padded, _ = _patches(tokens, None, patch_len=4, stride=2)  # 7 = 1 pad + 4 + 2
    assert torch.equal(padded[:, 0, :2], torch.zeros(2, 2))  # the zero in front
    assert torch.equal(padded[:, -1], tokens[:, 3:].reshape(2, 8))


@pytest.mark.parametrize("patch_len", [0, 4])
def test_channel_independent_runs_each_channel_alone_with_shared_weights(patch_len):
    spec = ForecastSpec(
        input_len=L, horizon=H, n_targets=3, n_params=2, channel_independent=True,
        subtract_last=True, patch_len=patch_len, patch_stride=patch_len,
    )  # fmt: skip
    model = recurrent(spec)
    y = torch.randn(5, L, 3)
    with torch.no_grad():
        raw, shift, scale = model(inputs(y))
        single = ForecastSpec(**{**spec.__dict__, "n_targets": 1})
        alone = RecurrentForecaster(single, _config()).eval()
        alone.load_state_dict(model.state_dict())
        for k in range(3):
            r, s, a = alone(inputs(y[:, :, k : k + 1]))
            assert torch.allclose(raw[:, :, k : k + 1], r, atol=1e-6)
            assert torch.allclose(shift[:, :, k], s[:, :, 0])
        y2 = y.clone()
        y2[:, :, 1] += torch.randn(5, L)  # another channel's context changes...
        assert torch.allclose(model(inputs(y2))[0][:, :, 0], raw[:, :, 0], atol=1e-6)


def test_channel_mixing_reads_every_channel():
    spec = ForecastSpec(input_len=L, horizon=H, n_targets=3, n_params=2)
    model = recurrent(spec)
    y = torch.randn(5, L, 3)
    y2 = y.clone()
    y2[:, :, 1] += 1.0
    with torch.no_grad():
        assert not torch.allclose(model(inputs(y))[0][:, :, 0], model(inputs(y2))[0][:, :, 0])


def test_masked_padding_and_unobserved_values_do_not_reach_the_forecast():
    spec = ForecastSpec(
        input_len=L, horizon=H, n_targets=1, n_params=3, n_extra=2, n_future=2,
        observed_channel=True, n_series=3, series_embedding_dim=2, n_static=1,
        subtract_last=True,
    )  # fmt: skip
    model = recurrent(spec)
    y = torch.randn(4, L, 1)
    mask = torch.ones(4, L, dtype=torch.bool)
    mask[0, :5] = False  # window 0 starts 5 steps into its context
    observed = mask[..., None].clone()
    observed[2, 7] = False  # a missing value inside window 2
    base = inputs(y * observed, 2, 2, observed, mask, 1)
    with torch.no_grad():
        ref = model(base)[0]
        noisy = inputs(y * observed, 2, 2, observed, mask, 1)
        noisy.extra[0, :5] += 100.0  # covariates before a series' start are never read
        assert torch.allclose(model(noisy)[0], ref, atol=1e-5)
        noisy.future[1] += 1.0  # ... but future covariates are
        assert not torch.allclose(model(noisy)[0][1], ref[1])
        noisy = inputs(y * observed, 2, 2, observed, mask, 1)
        noisy.y[2, 7] = 0.0  # a missing value enters as 0 with observed = 0, whatever y held
        assert torch.allclose(model(noisy)[0], ref, atol=1e-6)
        other = inputs(y * observed, 2, 2, observed, mask, 1)
        other.series = (other.series + 1) % 3  # the series embedding is read
        assert not torch.allclose(model(other)[0], ref)


def test_seasonal_naive_and_ridge_equal_the_task_baselines():
    rng = np.random.default_rng(0)
    y = torch.tensor(rng.normal(size=(40, L, 2)))
    target = torch.tensor(rng.normal(size=(40, H, 2)))
    observed = torch.ones_like(target, dtype=torch.bool)
    spec = ForecastSpec(input_len=L, horizon=H, n_targets=2, n_params=2)

    def batches():
        halves = (slice(0, 25), slice(25, 40))
        return [(inputs(y[i]), target[i], observed[i]) for i in halves]

    naive = SeasonalNaive(spec, period=5).double()
    naive.fit_windows(batches)
    raw, _, _ = naive(inputs(y))
    assert torch.equal(raw[..., 0], seasonal_naive(y, H, 5))
    residual = (target - seasonal_naive(y, H, 5)).numpy()
    sd = torch.nn.functional.softplus(raw[0, :, :, 1]) + 1e-4
    np.testing.assert_allclose(sd.numpy(), np.sqrt((residual**2).mean(0)), rtol=1e-5)
    for independent in (False, True):
        ridge = RidgeOnLags(
            ForecastSpec(input_len=L, horizon=H, n_targets=2, n_params=1,
                         channel_independent=independent), lam=1e-2,
        ).double()  # fmt: skip
        ridge.fit_windows(batches)
        if independent:  # every channel one sample of a shared univariate map
            x1 = y.transpose(1, 2).reshape(-1, L, 1)
            t1 = target.transpose(1, 2).reshape(-1, H, 1)
            ref = ridge_predict(fit_ridge(x1, t1, 1e-2), x1, H).reshape(40, 2, H).transpose(1, 2)
        else:
            ref = ridge_predict(fit_ridge(y, target, 1e-2), y, H)
        assert torch.allclose(ridge(inputs(y))[0][..., 0], ref, atol=1e-5)


@pytest.mark.parametrize(("n_targets", "independent", "location"), [(3, True, 0), (2, False, 2)])
def test_linear_skip_adds_a_linear_map_of_the_normalised_context_to_the_location(
    n_targets, independent, location
):
    spec = ForecastSpec(
        input_len=L, horizon=H, n_targets=n_targets, n_params=5, revin=True,
        channel_independent=independent, patch_len=4, patch_stride=2,
    )  # fmt: skip
    skip = ForecastSpec(**{**spec.__dict__, "linear_skip": True, "raw_location": location})
    model = recurrent(skip)
    torch.nn.init.normal_(model.out.weight)  # starts at zero (see below): give it a residual
    plain = RecurrentForecaster(spec, _config()).eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert missing == [] and sorted(unexpected) == ["skip.bias", "skip.weight"]
    y = torch.randn(6, L, n_targets, dtype=torch.float64) * 3 + 5
    model, plain = model.double(), plain.double()
    with torch.no_grad():
        raw, shift, scale = model(inputs(y))
        base, _, _ = plain(inputs(y))
        z = (y - y.mean(1, keepdim=True)) / (y.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()
        w, b = model.skip.weight, model.skip.bias  # (H, L), (H,)
        for k in range(n_targets):
            for j in range(H):
                expected = base[:, j, k, location] + z[:, :, k] @ w[j] + b[j]
                torch.testing.assert_close(raw[:, j, k, location], expected)
        others = [p for p in range(5) if p != location]
        assert torch.equal(raw[..., others], base[..., others])
        assert torch.allclose(shift, y.mean(1, keepdim=True))


def test_with_the_linear_skip_the_network_starts_as_the_linear_forecaster():
    """W_out starts at zero under the skip: the location is W_s z + b_s + b_out, the other
    parameters constant; the first gradient reaches W_out, and once W_out moves the
    recurrent backbone gets gradients too (the residual can grow)."""
    spec = ForecastSpec(
        input_len=L, horizon=H, n_targets=2, n_params=3, revin=True,
        channel_independent=True, linear_skip=True,
    )  # fmt: skip
    model = recurrent(spec).double().train()
    assert torch.equal(model.out.weight, torch.zeros_like(model.out.weight))
    y = torch.randn(4, L, 2, dtype=torch.float64) * 3 + 5
    raw, _, _ = model(inputs(y))
    z = (y - y.mean(1, keepdim=True)) / (y.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    linear = model.skip(z.transpose(1, 2)).transpose(1, 2)  # (B, H, K)
    b = model.out.bias
    torch.testing.assert_close(raw[..., 0], linear + b[0])
    torch.testing.assert_close(raw[..., 1:], b[1:].expand_as(raw[..., 1:]))
    raw.square().mean().backward()
    assert model.out.weight.grad.abs().sum() > 0
    backbone = [p for p in model.backbone.parameters() if p.grad is not None]
    assert all(p.grad.abs().sum() == 0 for p in backbone)  # nothing flows through W_out = 0
    with torch.no_grad():
        model.out.weight -= 0.1 * model.out.weight.grad
    model.zero_grad()
    model(inputs(y))[0].square().mean().backward()
    assert any(p.grad.abs().sum() > 0 for p in model.backbone.parameters())
