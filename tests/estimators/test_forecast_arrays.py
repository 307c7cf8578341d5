"""Forecaster on arrays beyond today's API: the built-in baselines run by the same code
(equal to statewise.tasks.forecast's), DLinear, channel-independent and channel-mixing
setups, RevIN, patching, save/load of the new options, the throughput shown while fitting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from statewise import Forecaster
from statewise.errors import ArgumentError
from statewise.estimators.fit import as_tensor
from statewise.tasks.forecast import baselines, split_series

pytestmark = pytest.mark.usefixtures("one_thread")

L, H = 36, 6
BUILT_IN = dict(input_len=L, horizon=H)  # dlinear, ridge and seasonal naive take no model_kwargs
TINY = dict(BUILT_IN, d_model=8, n_layers=1, mlp_ratio=1.0)


def series(n: int = 400, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    waves = 3 * np.sin(2 * np.pi * t / 24 + np.arange(channels)) + 0.02 * t
    return (waves + 0.3 * rng.normal(size=(n, channels))).squeeze()


def test_seasonal_naive_and_ridge_equal_the_task_baselines():
    data = series(400)
    splits = split_series(torch.tensor(data)[:, None], ["x"])
    n_train, n_val = splits.borders[1], splits.borders[2]
    expected = baselines(splits, L, H, part="test", period=24, lam=1e-2)
    test = data[n_val - L :]  # the test rows with their context, in the data's units
    # rel 1e-6: the Forecaster's panel holds the scaled series in float32, the task float64
    naive = Forecaster("seasonal_naive", **BUILT_IN).fit(data[:n_train], progress=False)
    assert naive.options["season_length"] == 24 and naive.options["loss"] == "normal"
    assert naive.evaluate(test)["mse"] == pytest.approx(expected["seasonal_naive"]["mse"], rel=1e-6)
    ridge = Forecaster("ridge", **BUILT_IN, subtract_last=False, ridge_lam=1e-2)
    ridge.fit(data[:n_train], progress=False)
    assert ridge.evaluate(test)["mse"] == pytest.approx(expected["ridge"]["mse"], rel=1e-6)
    assert ridge.evaluate(test)["mae"] == pytest.approx(expected["ridge"]["mae"], rel=1e-6)


def test_dlinear_learns_and_round_trips(tmp_path):
    data = series(400)
    f = Forecaster("dlinear", **BUILT_IN, lr=1e-2).fit(data[:300], max_steps=80, progress=False)
    first, last = (
        np.mean([h["loss"] for h in f.history[:5]]),
        np.mean([h["loss"] for h in f.history[-5:]]),
    )
    assert last < first - 0.5  # NLL falls
    untrained = Forecaster("dlinear", **BUILT_IN).fit(data[:300], max_steps=1, progress=False)
    assert f.evaluate(data[300 - L :])["mse"] < 0.5 * untrained.evaluate(data[300 - L :])["mse"]
    f.save(tmp_path / "d")
    loaded = Forecaster.load(tmp_path / "d")
    np.testing.assert_array_equal(loaded.predict(data[-L:]), f.predict(data[-L:]))


def test_channel_independent_forecasts_ignore_other_channels_mixing_does_not():
    data = series(300, channels=3)
    context = data[-L:].copy()
    moved = context.copy()
    moved[:, 2] += np.linspace(0.0, 5.0, L)  # not a level shift: subtract_last removes those
    independent = Forecaster(**TINY, mode="channel_independent").fit(
        data, max_steps=3, progress=False
    )
    np.testing.assert_allclose(
        independent.predict(moved)[:, :2], independent.predict(context)[:, :2], rtol=1e-5
    )
    assert not np.allclose(independent.predict(moved)[:, 2], independent.predict(context)[:, 2])
    mixing = Forecaster(**TINY).fit(data, max_steps=3, progress=False)
    assert not np.allclose(mixing.predict(moved)[:, 0], mixing.predict(context)[:, 0])
    # the shared weights see one channel at a time: one input width for any number of channels
    assert independent.model.embed.in_features == 1 and mixing.model.embed.in_features == 3


@pytest.mark.parametrize(
    "options",
    [dict(revin=True), dict(patch_len=8, patch_stride=4), dict(loss="quantile", levels=[50, 90])],
)
def test_new_options_train_and_round_trip(options, tmp_path):
    data = series(300, channels=2)
    f = Forecaster(**TINY, mode="channel_independent", **options).fit(
        data, max_steps=5, progress=False
    )
    f.save(tmp_path / "f")
    loaded = Forecaster.load(tmp_path / "f")
    assert loaded.options == f.options and loaded.spec == f.spec
    np.testing.assert_array_equal(loaded.predict(data[-L:]), f.predict(data[-L:]))
    assert torch.equal(loaded.shift, f.shift) and torch.equal(loaded.scale, f.scale)
    if options.get("revin"):  # RevIN's affine is learnt: it moved from (1, 0)
        assert not torch.equal(f.model.norm.beta, torch.zeros(2))
        assert f.options["subtract_last"] is False


def test_robust_scaler_uses_median_and_iqr():
    data = series(300)
    f = Forecaster(**TINY, scaler="robust").fit(data, max_steps=1, progress=False)
    q25, q50, q75 = np.percentile(data, [25, 50, 75])
    assert f.shift.item() == pytest.approx(q50) and f.scale.item() == pytest.approx(q75 - q25)


def test_progress_bar_shows_tokens_per_second(capsys):
    f = Forecaster(**TINY).fit(series(200), max_steps=3, progress=True)
    assert "tok_s=" in capsys.readouterr().err
    assert f.tokens_per_s > 0


def test_array_models_refuse_dataframe_only_arguments():
    f = Forecaster(**TINY).fit(series(200), max_steps=1, progress=False)
    with pytest.raises(ArgumentError, match="apply to a model fitted on a DataFrame"):
        f.predict(series(200)[-L:], h=3)
    with pytest.raises(ArgumentError, match="apply to a DataFrame train"):
        Forecaster(**TINY).fit(series(200), val_size=6)
    with pytest.raises(ArgumentError, match="patch_len must be <= input_len"):
        Forecaster(**TINY, patch_len=L + 1)
    with pytest.raises(ArgumentError, match="gives loss 'normal' or 'mse'"):
        Forecaster("ridge", loss="studentt")
    with pytest.raises(ArgumentError, match=r"reads the target only; it takes no \['mlp_ratio'\]"):
        Forecaster("dlinear", mlp_ratio=1.0)


def test_array_intervals_cover_as_stated_on_known_noise():
    """predict(context, level=...) on an array model: a dict keyed like the DataFrame's
    columns, each shaped like the point forecast. On daily sines with sigma = 0.5 Gaussian
    noise (the model's MSE after 500 steps: 0.35 = 1.4 sigma^2) the 80 % interval covers
    70-90 % of the 341 x 12 held-out targets (measured: 76.1 %) and the 95 % interval
    88-99 % (measured: 97.0 %); intervals left in the scaled units would cover about 57 %
    at 80 (the data's std is 1.5). The point forecast is predict()'s."""
    sigma, n, L2, H2 = 0.5, 1600, 48, 12
    rng = np.random.default_rng(0)
    t = np.arange(n)
    data = 2 * np.sin(2 * np.pi * t / 24) + sigma * rng.normal(size=n)
    f = Forecaster(input_len=L2, horizon=H2, d_model=16, n_layers=1, batch_size=64, lr=3e-3)
    f.fit(data[:1200], max_steps=500, progress=False)
    starts = np.arange(1200, n - L2 - H2 + 1)
    contexts = np.stack([data[s : s + L2] for s in starts])  # (N, L2): a batch
    targets = np.stack([data[s + L2 : s + L2 + H2] for s in starts])
    out = f.predict(contexts, level=[95, 80])
    assert list(out) == ["lru", "lru-lo-95", "lru-lo-80", "lru-hi-80", "lru-hi-95"]
    assert all(v.shape == (len(starts), H2) and v.dtype == np.float64 for v in out.values())
    np.testing.assert_allclose(out["lru"], f.predict(contexts), rtol=1e-12)
    assert (out["lru-lo-95"] < out["lru-lo-80"]).all() and (
        out["lru-hi-80"] < out["lru-hi-95"]
    ).all()
    for level, low, high in [(80, 0.70, 0.90), (95, 0.88, 0.99)]:
        inside = (out[f"lru-lo-{level}"] <= targets) & (targets <= out[f"lru-hi-{level}"])
        assert low <= inside.mean() <= high, (level, inside.mean())
    one = f.predict(torch.tensor(data[-L2:], dtype=torch.float32), level=[80])
    assert one["lru-lo-80"].shape == (H2,) and one["lru-lo-80"].dtype == torch.float32
    mse = Forecaster(**TINY, loss="mse").fit(series(200), max_steps=1, progress=False)
    with pytest.raises(ArgumentError, match="gives point forecasts only"):
        mse.predict(series(200)[-L:], level=[80])
    with pytest.raises(ArgumentError, match="level"):
        f.predict(data[-L2:], level=[120])


def test_read_only_arrays_are_copied_writable_ones_shared():
    """pandas' to_numpy() under copy-on-write is read-only: torch cannot share it (it warns
    of undefined behaviour), so as_tensor copies it; a writable array is shared, not copied."""
    data = series(200)
    read_only = data.copy()
    read_only.flags.writeable = False
    assert not np.shares_memory(as_tensor(read_only, "x")[0].numpy(), read_only)
    assert np.shares_memory(as_tensor(data, "x")[0].numpy(), data)
    f = Forecaster(**TINY).fit(read_only, max_steps=2, progress=False)
    np.testing.assert_array_equal(f.predict(read_only[-L:]), f.predict(data[-L:]))
