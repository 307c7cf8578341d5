"""Forecaster on long DataFrames: columns and timestamps of predict, many series of different
lengths and starts in one model, covariates (future-known, past-only, static, calendar),
missing values, the probabilistic heads, save/load, dispatch and errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from statewise import Forecaster
from statewise.errors import ArgumentError, ArgumentTypeError, ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")

L, H = 24, 6
TINY = dict(input_len=L, horizon=H, d_model=8, n_layers=1, mlp_ratio=1.0, batch_size=32)


def sine_panel(lengths, starts, sigma=0.3, seed=0, freq="h", ids=None) -> pd.DataFrame:
    """Series 2 sin(2 pi t / 24 + i) + i + N(0, sigma^2) noise, with a future-known 0/1
    column ``promo`` (adds 1.5 to y) and a past-only column ``temp`` (noise)."""
    rng = np.random.default_rng(seed)
    parts = []
    for i, (n, start) in enumerate(zip(lengths, starts)):
        t = np.arange(n)
        promo = (rng.random(n) < 0.2).astype(float)
        y = 2 * np.sin(2 * np.pi * t / 24 + i) + i + 1.5 * promo + sigma * rng.normal(size=n)
        parts.append(
            pd.DataFrame(
                {
                    "unique_id": f"s{i}" if ids is None else ids[i],
                    "ds": pd.date_range(start, periods=n, freq=freq),
                    "y": y,
                    "promo": promo,
                    "temp": rng.normal(size=n),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


DF = sine_panel([120, 90, 100], ["2021-01-01", "2021-01-02 05:00", "2020-12-30"])
STATIC = pd.DataFrame({"unique_id": ["s0", "s1", "s2"], "size": [1.0, 5.0, 2.0]})


def future(df: pd.DataFrame, h: int = H) -> pd.DataFrame:
    rows = []
    for uid, part in df.groupby("unique_id"):
        ds = pd.date_range(part.ds.max(), periods=h + 1, freq="h")[1:]
        rows.append(pd.DataFrame({"unique_id": uid, "ds": ds, "promo": np.arange(h) % 2.0}))
    return pd.concat(rows, ignore_index=True)


@pytest.fixture(scope="module")
def fitted() -> Forecaster:
    f = Forecaster(
        **TINY,
        futr_exog_list=["promo"],
        hist_exog_list=["temp"],
        stat_exog_list=["size"],
        series_embedding_dim=2,
    )
    return f.fit(DF, static_df=STATIC, max_steps=30, progress=False)


def test_predict_columns_timestamps_and_interval_order(fitted):
    out = fitted.predict(futr_df=future(DF), level=[95, 80])
    assert list(out.columns) == [
        "unique_id", "ds", "lru", "lru-lo-95", "lru-lo-80", "lru-hi-80", "lru-hi-95",
    ]  # fmt: skip
    assert len(out) == 3 * H and out.unique_id.tolist() == ["s0"] * H + ["s1"] * H + ["s2"] * H
    for uid, part in out.groupby("unique_id"):
        last = DF[DF.unique_id == uid].ds.max()
        assert part.ds.tolist() == list(pd.date_range(last, periods=H + 1, freq="h")[1:])
    ordered = out[["lru-lo-95", "lru-lo-80", "lru", "lru-hi-80", "lru-hi-95"]].to_numpy()
    assert (np.diff(ordered, axis=1) > 0).all()
    short = fitted.predict(h=2, futr_df=future(DF, 2))  # h < horizon: the first 2 steps
    assert list(short.columns) == ["unique_id", "ds", "lru"] and len(short) == 6
    np.testing.assert_allclose(
        short.lru.to_numpy(), out.groupby("unique_id").head(2).lru.to_numpy(), rtol=1e-6
    )


def test_default_forecaster_gives_intervals_and_alias_names_columns():
    f = Forecaster(**TINY, alias="mine").fit(
        DF[["unique_id", "ds", "y"]], max_steps=5, progress=False
    )
    assert f.options["loss"] == "studentt" and f.name == "mine"
    out = f.predict(level=[80])
    assert list(out.columns) == ["unique_id", "ds", "mine", "mine-lo-80", "mine-hi-80"]
    assert f.tokens_per_s > 0 and len(f.history) == 5
    f.fit(DF[["unique_id", "ds", "y"]], max_steps=3, progress=False)  # history: this fit's
    assert [h["step"] for h in f.history] == [1, 2, 3]


def test_future_known_covariates_are_required_and_read(fitted):
    with pytest.raises(DataError, match=r"futr_df is required: .*\['promo'\]"):
        fitted.predict()
    futr = future(DF)
    with pytest.raises(DataError, match=r"futr_df lacks 1 of the 18 rows .* unique_id='s1'"):
        fitted.predict(futr_df=futr.drop(index=8))
    with pytest.raises(DataError, match=r"futr_df lacks the columns \['promo'\]"):
        fitted.predict(futr_df=futr.drop(columns="promo"))
    base = fitted.predict(futr_df=futr).lru.to_numpy()
    changed = fitted.predict(futr_df=futr.assign(promo=1.0 - futr.promo)).lru.to_numpy()
    assert not np.allclose(base, changed)
    # a past-only covariate has no future: values for it in futr_df are not read
    ignored = fitted.predict(futr_df=futr.assign(temp=1e6)).lru.to_numpy()
    np.testing.assert_array_equal(base, ignored)
    assert fitted.spec.n_future == 1 + len(fitted.frame.calendar) == 7  # promo + hour/dow/doy
    assert fitted.spec.n_extra == 1 + fitted.spec.n_future  # temp + the future-known ones
    history = DF.copy()
    history.loc[history.index[-1], "temp"] += 5.0  # ... but its past values are
    moved = fitted.predict(history, futr_df=futr).lru.to_numpy()
    assert not np.allclose(base[-H:], moved[-H:]) and np.allclose(base[:-H], moved[:-H])


def test_static_features_are_read_and_required_for_new_series(fitted):
    futr = future(DF)
    base = fitted.predict(futr_df=futr).lru.to_numpy()
    other = fitted.predict(futr_df=futr, static_df=STATIC.assign(size=[9.0, 5.0, 2.0]))
    assert not np.allclose(base[:H], other.lru.to_numpy()[:H])
    np.testing.assert_allclose(base[H:], other.lru.to_numpy()[H:], rtol=1e-6)
    new = DF[DF.unique_id == "s0"].assign(unique_id="new")
    with pytest.raises(DataError, match="no embedding for them"):
        fitted.predict(new, futr_df=future(new))
    plain = Forecaster(**TINY, stat_exog_list=["size"]).fit(
        DF[["unique_id", "ds", "y"]], static_df=STATIC, max_steps=2, progress=False
    )
    with pytest.raises(DataError, match=r"static_df is required .*\['new'\]"):
        plain.predict(new[["unique_id", "ds", "y"]])
    out = plain.predict(new, static_df=pd.DataFrame({"unique_id": ["new"], "size": [1.0]}))
    assert out.unique_id.unique().tolist() == ["new"]
    with pytest.raises(DataError, match=r"static_df is required: stat_exog_list is \['size'\]"):
        Forecaster(**TINY, stat_exog_list=["size"]).fit(DF, max_steps=1, progress=False)


def test_missing_values_equal_missing_timestamps_and_are_left_out_of_scaling():
    df = DF[["unique_id", "ds", "y"]].copy()
    gone = [5, 6, 40, 150, 151, 152]
    with_nan = df.copy()
    with_nan.loc[gone, "y"] = np.nan
    dropped = df.drop(index=gone)
    options = dict(TINY, seed=3)
    a = Forecaster(**options).fit(with_nan, max_steps=20, progress=False)
    b = Forecaster(**options).fit(dropped, max_steps=20, progress=False)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    pa, pb = a.predict(level=[80]), b.predict(level=[80])
    pd.testing.assert_frame_equal(pa, pb)
    assert np.isfinite(pa.drop(columns=["unique_id", "ds"]).to_numpy()).all()
    for i, uid in enumerate(a.frame.ids):  # statistics of the observed values only
        y = with_nan[with_nan.unique_id == uid].y.to_numpy()
        assert a.frame.shift[i, 0].item() == pytest.approx(np.nanmean(y))
        assert a.frame.scale[i, 0].item() == pytest.approx(np.nanstd(y))
    with pytest.raises(DataError, match="series 's1' has no observed y"):
        Forecaster(**TINY).fit(df.assign(y=np.where(df.unique_id == "s1", np.nan, df.y)))


def test_series_of_any_length_one_model_and_robust_scaling():
    df = sine_panel([150, 12, 60], ["2021-03-01", "2021-03-05", "2021-02-27"])
    f = Forecaster(**TINY, scaler="robust").fit(
        df[["unique_id", "ds", "y"]], max_steps=5, progress=False
    )
    out = f.predict()
    assert out.groupby("unique_id").size().tolist() == [H, H, H]  # the 12-row series too
    y1 = df[df.unique_id == "s1"].y.to_numpy()
    q25, q50, q75 = np.percentile(y1, [25, 50, 75])
    assert f.frame.shift[1, 0].item() == pytest.approx(q50)
    assert f.frame.scale[1, 0].item() == pytest.approx(q75 - q25)


def test_covariates_are_learnt_from():
    """y = 2 x + noise with x a future-known random signal: only a model that reads x can
    forecast y; it must beat one that cannot by a wide margin."""
    rng = np.random.default_rng(1)
    n, parts = 300, []
    for i in range(2):
        x = rng.normal(size=n)
        parts.append(
            pd.DataFrame(
                {
                    "unique_id": i,
                    "ds": pd.date_range("2020-01-01", periods=n, freq="D"),
                    "y": 2 * x + 0.1 * rng.normal(size=n),
                    "x": x,
                }
            )
        )
    df = pd.concat(parts, ignore_index=True)
    train, test = df.groupby("unique_id").head(240), df
    options = dict(TINY, lr=1e-2, calendar=False)
    with_x = Forecaster(**options, futr_exog_list=["x"]).fit(train, max_steps=150, progress=False)
    without = Forecaster(**options).fit(
        train[["unique_id", "ds", "y"]], max_steps=150, progress=False
    )
    held_out = test.groupby("unique_id").tail(60 + L)
    mse_x = with_x.evaluate(held_out)["mse"]
    mse_plain = without.evaluate(held_out[["unique_id", "ds", "y"]])["mse"]
    assert mse_x < 0.25 * mse_plain, (mse_x, mse_plain)


def test_quantile_mse_and_negbin_heads():
    df = DF[["unique_id", "ds", "y"]]
    q = Forecaster(**TINY, loss="quantile", levels=[80]).fit(df, max_steps=3, progress=False)
    assert list(q.predict(level=80).columns)[2:] == ["lru", "lru-lo-80", "lru-hi-80"]
    with pytest.raises(ArgumentError, match=r"trained for the levels \[80.0\]"):
        q.predict(level=[95])
    point = Forecaster(**TINY, loss="mse").fit(df, max_steps=3, progress=False)
    assert list(point.predict().columns) == ["unique_id", "ds", "lru"]
    with pytest.raises(ArgumentError, match="loss='mse' gives point forecasts only"):
        point.predict(level=[80])
    assert set(point.evaluate(df)) == {"mse", "mae"}
    rng = np.random.default_rng(0)
    counts = df.assign(y=rng.poisson(3.0, len(df)).astype(float))
    nb = Forecaster(**TINY, loss="negbin").fit(counts, max_steps=10, progress=False)
    out = nb.predict(level=[80])
    bounds = out[["lru-lo-80", "lru-hi-80"]].to_numpy()
    assert (bounds >= 0).all() and (bounds == np.round(bounds)).all()
    assert (out.lru > 0).all()
    with pytest.raises(DataError, match="loss='negbin' needs counts"):
        Forecaster(**TINY, loss="negbin").fit(df, max_steps=1)


def test_save_load_round_trips_a_dataframe_model(fitted, tmp_path):
    fitted.save(tmp_path / "f")
    loaded = Forecaster.load(tmp_path / "f")
    futr = future(DF)
    pd.testing.assert_frame_equal(
        loaded.predict(futr_df=futr, level=[80]), fitted.predict(futr_df=futr, level=[80])
    )
    assert loaded.options == fitted.options and loaded.spec == fitted.spec
    assert loaded.frame.freq == fitted.frame.freq and loaded.frame.ids.tolist() == [
        "s0",
        "s1",
        "s2",
    ]
    for name in ("shift", "scale", "static", "static_shift", "static_scale"):
        assert torch.equal(getattr(loaded.frame, name), getattr(fitted.frame, name)), name
    history = DF.groupby("unique_id").tail(L + 5)
    pd.testing.assert_frame_equal(
        loaded.predict(history, futr_df=futr), fitted.predict(history, futr_df=futr)
    )


def test_dispatch_and_errors(fitted):
    with pytest.raises(ArgumentTypeError, match="fitted on a DataFrame; pass a DataFrame"):
        fitted.predict(np.zeros(L))
    with pytest.raises(ArgumentError, match="val_size= instead"):
        Forecaster(**TINY).fit(DF, DF)
    with pytest.raises(ArgumentError, match="val_size must be 0 or >= horizon"):
        Forecaster(**TINY).fit(DF, val_size=2)
    with pytest.raises(ArgumentError, match=r"h must be an int in \[1, horizon = 6\]"):
        fitted.predict(h=7, futr_df=future(DF, 7))
    with pytest.raises(ArgumentError, match="need a DataFrame train"):
        Forecaster(**TINY, futr_exog_list=["promo"]).fit(np.zeros(100))
    with pytest.raises(ArgumentError, match="revin=True and subtract_last=True"):
        Forecaster(revin=True, subtract_last=True)
    with pytest.raises(ArgumentError, match="layer must be a registered layer"):
        Forecaster(layer="transformer")
    with pytest.raises(ArgumentError, match="reads the target only"):
        Forecaster(layer="dlinear", futr_exog_list=["promo"])
    with pytest.raises(ArgumentError, match=r"it takes no \['linear_skip'\]"):
        Forecaster(layer="dlinear", linear_skip=True)  # DLinear is linear already
    with pytest.raises(ArgumentError, match="loss='negbin' has none"):
        Forecaster(linear_skip=True, loss="negbin")
    with pytest.raises(ArgumentTypeError, match="linear_skip must be True or False"):
        Forecaster(linear_skip=1)
    # the network's extra fields are checked at construction, not at the first fit
    with pytest.raises(ArgumentError, match="unexpected keyword argument 'dropuot'"):
        Forecaster(dropuot=0.3)
    with pytest.raises(ConfigError, match="model.dropout must be a finite number, got nan"):
        Forecaster(dropout=float("nan"))
    with pytest.raises(ConfigError, match=r"model.dropout must be in \[0, 1\), got 1.5"):
        Forecaster(dropout=1.5)
    with pytest.raises(DataError, match=r"no training window"):
        Forecaster(**TINY).fit(DF.groupby("unique_id").head(H), max_steps=1)
    val = Forecaster(**TINY).fit(
        DF[["unique_id", "ds", "y"]], val_size=H, max_steps=4, progress=False
    )
    assert "val_loss" in val.history[-1]
    scores = fitted.evaluate(DF, static_df=STATIC)
    assert set(scores) == {"mse", "mae", "crps"} and all(np.isfinite(list(scores.values())))
    before = DF.copy()
    fitted.predict(DF, futr_df=future(DF))
    pd.testing.assert_frame_equal(DF, before)  # nothing the user gave is modified


def test_training_loss_covers_the_observed_targets_only(fitted):
    """window_loss on windows with missing targets equals the Student-t NLL over the observed
    ones, computed from the network's parameters by scipy."""
    stats = pytest.importorskip("scipy.stats")
    from statewise.estimators.forecast.training import distribution, window_loss

    df = DF.copy()
    df.loc[[100, 101, 102], "y"] = np.nan  # series s0, rows 100-102
    panel = fitted.frame.panel(fitted.frame.grid(df, "df"), L, STATIC)
    s, c = torch.tensor([0, 0, 1]), torch.tensor([97, 60, 40])
    with torch.no_grad():
        loss = window_loss(fitted.model, fitted.family, panel, (s, c), H)
        params = distribution(fitted.model, fitted.family, panel.inputs(s, c, H)).double()
    target, observed = panel.targets(s, c, H)
    assert observed.sum() == 3 * H - 3
    loc, scale, dof = (params[..., i].numpy() for i in range(3))
    nll = -stats.t.logpdf(target.double().numpy(), dof, loc, scale)
    # rel 1e-5: the loss runs in float32, the reference in float64
    assert float(loss) == pytest.approx(nll[observed.numpy()].mean(), rel=1e-5)


def test_integer_time_index_continues_with_its_step():
    y = np.sin(np.arange(120) / 4.0)
    df = pd.DataFrame(
        {
            "unique_id": np.repeat([7, 3], 60),
            "ds": np.concatenate([np.arange(0, 120, 2), np.arange(10, 130, 2)]),
            "y": y,
        }
    )
    f = Forecaster(**TINY).fit(df, max_steps=2, progress=False)
    assert f.frame.freq == 2 and f.frame.calendar == [] and f.spec.n_future == 0
    out = f.predict()
    assert out.unique_id.tolist() == [3] * H + [7] * H  # sorted ids, of the ids' own type
    assert out.ds.tolist() == list(range(130, 130 + 2 * H, 2)) + list(range(120, 120 + 2 * H, 2))
    with pytest.raises(ArgumentTypeError, match=r"context\['ds'\] must hold integers"):
        f.predict(DF[["unique_id", "ds", "y"]])
