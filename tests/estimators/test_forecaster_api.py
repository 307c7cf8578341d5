"""statewise.Forecaster: shapes and types of predict, training, save/load, errors."""

import numpy as np
import pytest
import torch

import statewise
from statewise.estimators.forecast.arrays import context_inputs
from statewise.estimators.forecast.forecaster import NotFittedError
from statewise.estimators.forecast.training import distribution

L, H = 12, 4


def _sine(n: int, channels: int | None = None) -> np.ndarray:
    t = np.arange(n, dtype=np.float64)
    wave = 3.0 + 2.0 * np.sin(2 * np.pi * t / 12)
    if channels is None:
        return wave
    return np.stack([wave * (c + 1) for c in range(channels)], axis=1)


def _small(**kwargs) -> statewise.Forecaster:
    return statewise.Forecaster("lru", input_len=L, horizon=H, d_model=8, n_layers=1, **kwargs)


@pytest.fixture(scope="module")
def uni():
    return _small().fit(_sine(80), max_steps=3, progress=False)


@pytest.fixture(scope="module")
def multi():
    return _small().fit(torch.tensor(_sine(80, 3)), epochs=1, progress=False)


def test_exports_the_high_level_forecaster():
    assert statewise.Forecaster.__module__ == "statewise.estimators.forecast.forecaster"
    assert statewise.ForecastHead.__module__ == "statewise.models.heads"


@pytest.mark.parametrize(
    "shape, out",
    [((L,), (H,)), ((L, 1), (H, 1)), ((5, L), (5, H)), ((5, L, 1), (5, H, 1))],
)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_predict_shapes_univariate(uni, shape, out, kind):
    context = np.random.default_rng(0).normal(size=shape)
    if kind == "torch":
        context = torch.tensor(context, dtype=torch.float32)
    pred = uni.predict(context)
    assert type(pred) is type(context) and tuple(pred.shape) == out
    assert pred.dtype == context.dtype


@pytest.mark.parametrize("shape, out", [((L, 3), (H, 3)), ((2, L, 3), (2, H, 3))])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_predict_shapes_multivariate(multi, shape, out, kind):
    context = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    if kind == "torch":
        context = torch.from_numpy(context)
    pred = multi.predict(context)
    assert type(pred) is type(context) and tuple(pred.shape) == out
    with pytest.raises(ValueError, match="context must have shape"):
        multi.predict(context[..., :2])


def test_predictions_are_in_original_units(uni):
    series = _sine(80)
    batch = np.stack([series[i : i + L] for i in range(3)])
    single = uni.predict(series[:L])
    np.testing.assert_allclose(uni.predict(batch)[0], single, rtol=1e-5, atol=1e-5)
    norm = (torch.tensor(series[:L], dtype=torch.float64)[None, :, None] - uni.shift) / uni.scale
    with torch.no_grad():  # the network's mean in the scaled units, mapped back by hand
        params = distribution(uni.model.eval(), uni.family, context_inputs(norm, uni.horizon))
        expected = uni.family.mean(params.double()) * uni.scale + uni.shift
    np.testing.assert_allclose(single, expected[0, :, 0].numpy(), rtol=1e-5, atol=1e-5)


def test_fit_reduces_training_loss_on_a_sine():
    f = _small(lr=1e-2).fit(_sine(200), max_steps=60, progress=False)
    losses = [h["loss"] for h in f.history]
    assert len(losses) == 60
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    metrics = f.evaluate(_sine(60))
    assert set(metrics) == {"mse", "mae", "crps"} and metrics["mse"] < np.mean(losses[:5])


def test_fit_with_validation_and_budget():
    f = _small().fit(_sine(60), _sine(40), budget_s=0.5, progress=False)
    assert f.history and any("val_mse" in h for h in f.history)


def test_save_load_round_trip(uni, tmp_path):
    uni.save(tmp_path / "fc")
    uni.save(tmp_path / "fc")  # overwriting an existing directory is atomic too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fc"]
    loaded = statewise.Forecaster.load(tmp_path / "fc")
    context = _sine(40)[:L]
    np.testing.assert_array_equal(loaded.predict(context), uni.predict(context))
    assert loaded.options == uni.options
    with pytest.raises(ValueError, match="not a saved Forecaster"):
        statewise.Forecaster.load(tmp_path / "missing")
    old = tmp_path / "old"  # the two files of a save from before the DataFrame API
    old.mkdir()
    for name in ("forecaster.json", "model.safetensors"):
        (old / name).write_bytes((tmp_path / "fc" / name).read_bytes())
    with pytest.raises(ValueError, match="saved by an earlier statewise .* fit again"):
        statewise.Forecaster.load(old)
    with pytest.raises(ValueError, match="exists and is not a saved Forecaster"):
        uni.save(old)  # and saving over it is refused: it is not ours to replace


def test_errors(uni):
    fresh = _small()
    with pytest.raises(NotFittedError, match="call fit before predict"):
        fresh.predict(np.zeros(L))
    with pytest.raises(ValueError, match="call fit before evaluate"):
        fresh.evaluate(np.zeros(40))
    with pytest.raises(TypeError, match="train must be a numpy array or torch tensor"):
        fresh.fit([1.0] * 40)
    with pytest.raises(ValueError, match="train has 10 rows, fewer than"):
        fresh.fit(np.zeros(10))
    nan = _sine(40)
    nan[3] = np.nan
    with pytest.raises(ValueError, match="train contains NaN"):
        fresh.fit(nan)
    with pytest.raises(ValueError, match="train must have shape"):
        fresh.fit(np.zeros((40, 2, 2)))
    with pytest.raises(ValueError, match="val has 2 channels"):
        fresh.fit(_sine(40), _sine(40, 2), max_steps=1, progress=False)
    with pytest.raises(ValueError, match="context must have shape"):
        uni.predict(np.zeros(L + 1))
    with pytest.raises(ValueError, match="context contains NaN"):
        uni.predict(np.full(L, np.nan))
    with pytest.raises(TypeError, match="context must"):
        uni.predict("abc")
    with pytest.raises(ValueError, match="series has 2 channels"):
        uni.evaluate(_sine(40, 2))
    with pytest.raises(ValueError, match="max_steps must be positive"):
        fresh.fit(_sine(40), max_steps=0)
    with pytest.raises(ValueError, match="input_len must be a positive int"):
        statewise.Forecaster(input_len=0)
