"""Forecasting data: CSV reading, splits, windows, normalisation, metrics and baselines."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from statewise.tasks.forecast import (
    BUILTIN_PERIODS,
    baselines,
    builtin_series,
    fit_ridge,
    interpolate_gaps,
    load_splits,
    mae,
    mse,
    read_csv,
    ridge_predict,
    seasonal_naive,
    split_rows,
    split_series,
    windows,
)

ETTH1 = Path(__file__).resolve().parents[3] / "shared" / "data" / "ETTh1.csv"


def _write_csv(path: Path, n: int) -> Path:
    lines = ["date,a,b,OT"] + [f"t{i},{i},{2 * i + 1},{i * i % 7}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_csv_columns_and_target(tmp_path):
    path = _write_csv(tmp_path / "s.csv", 5)
    data, names = read_csv(path, target="OT")
    assert names == ["OT"] and data.shape == (5, 1)
    assert data[:, 0].tolist() == [0.0, 1.0, 4.0, 2.0, 2.0]
    data, names = read_csv(path)
    assert names == ["a", "b", "OT"] and data[2].tolist() == [2.0, 5.0, 4.0]
    data, names = read_csv(path, columns=["OT", "b"], target="OT")
    assert names == ["b", "OT"]
    with pytest.raises(ValueError, match="not in"):
        read_csv(path, columns=["zz"])


def test_split_rows():
    assert split_rows(17420) == (8640, 2880, 2880)
    assert split_rows(14400) == (8640, 2880, 2880)
    assert split_rows(100) == (70, 10, 20)
    assert split_rows(15) == (10, 1, 4)


def test_windows_by_hand():
    series = torch.arange(7.0)[:, None]
    x, y = windows(series, input_len=3, horizon=2)
    assert x.shape == (3, 3, 1) and y.shape == (3, 2, 1)
    assert x[:, :, 0].tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]
    assert y[:, :, 0].tolist() == [[3, 4], [4, 5], [5, 6]]
    x, y = windows(series, 3, 2, stride=2)
    assert x[:, 0, 0].tolist() == [0, 2]
    with pytest.raises(ValueError, match="fewer than input_len"):
        windows(series, 6, 2)


def test_normalisation_uses_train_rows_only(tmp_path):
    path = _write_csv(tmp_path / "s.csv", 100)
    splits = load_splits(path, target="a")
    assert splits.borders == (0, 70, 80, 100)
    train = [float(i) for i in range(70)]
    mean = sum(train) / 70
    std = (sum((v - mean) ** 2 for v in train) / 70) ** 0.5
    assert splits.mean.item() == pytest.approx(mean) and splits.std.item() == pytest.approx(std)
    assert splits.data[99, 0].item() == pytest.approx((99 - mean) / std)
    assert splits.part("train").mean().item() == pytest.approx(0.0, abs=1e-12)
    assert splits.rows("val") == 10 and splits.part("val", 5).shape == (15, 1)
    assert splits.part("test", 3)[3, 0].item() == pytest.approx((80 - mean) / std)


def test_metrics_and_seasonal_naive_by_hand():
    assert mse(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])) == pytest.approx(2.5)
    assert mae(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])) == pytest.approx(1.5)
    x = torch.arange(10.0).view(1, 10, 1)
    pred = seasonal_naive(x, horizon=7, period=3)
    assert pred[0, :, 0].tolist() == [7, 8, 9, 7, 8, 9, 7]


def test_ridge_matches_plain_python():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, 1, generator=gen, dtype=torch.float64)
    y = (0.5 * x[:, :1] - 2 * x[:, 1:] + 0.3).clone()
    lam = 0.1
    w = fit_ridge(x, y, lam)
    # plain Python: normal equations [X 1]^T [X 1] + lam*n*diag(1,1,0), solved by Gauss-Jordan
    rows = [[x[i, 0, 0].item(), x[i, 1, 0].item(), 1.0] for i in range(30)]
    a = [[sum(r[j] * r[k] for r in rows) for k in range(3)] for j in range(3)]
    for j in range(2):
        a[j][j] += lam * 30
    b = [sum(r[j] * y[i, 0, 0].item() for i, r in enumerate(rows)) for j in range(3)]
    m = [row + [bj] for row, bj in zip(a, b)]
    for c in range(3):
        m[c] = [v / m[c][c] for v in m[c]]
        for r in range(3):
            if r != c:
                m[r] = [vr - m[r][c] * vc for vr, vc in zip(m[r], m[c])]
    assert w[:, 0].tolist() == pytest.approx([m[j][3] for j in range(3)], rel=1e-9)
    pred = ridge_predict(w, x, horizon=1)
    assert pred.shape == (30, 1, 1)


def test_baselines_on_a_periodic_series(tmp_path):
    lines = ["date,v"] + [f"t{i},{[1, 5, 2, 8][i % 4]}" for i in range(200)]
    (tmp_path / "p.csv").write_text("\n".join(lines) + "\n")
    splits = load_splits(tmp_path / "p.csv", target="v")
    result = baselines(splits, input_len=8, horizon=3, period=4)
    assert result["seasonal_naive"]["mse"] == pytest.approx(0.0, abs=1e-12)
    assert result["ridge"]["mse"] < 1e-3


@pytest.mark.skipif(not ETTH1.is_file(), reason=f"ETTh1 not found at {ETTH1}")
def test_etth1_split():
    splits = load_splits(ETTH1, target="OT")
    assert [splits.rows(p) for p in ("train", "val", "test")] == [8640, 2880, 2880]
    assert splits.columns == ["OT"]
    multi = load_splits(ETTH1, target=None)
    assert multi.columns == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]


def test_interpolate_gaps_by_hand():
    nan = float("nan")
    x = torch.tensor([nan, 1.0, nan, nan, 4.0, nan], dtype=torch.float64)
    assert interpolate_gaps(x).tolist() == [1.0, 1.0, 2.0, 3.0, 4.0, 4.0]
    assert interpolate_gaps(torch.tensor([nan, 2.0, nan])).tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="no observed"):
        interpolate_gaps(torch.tensor([nan, nan]))


def test_co2_matches_statsmodels_with_numpy_interpolation():
    datasets = pytest.importorskip("statsmodels.datasets")
    frame = datasets.co2.load_pandas().data  # statsmodels' own loader of the same file
    raw = frame["co2"].to_numpy()
    known = ~np.isnan(raw)
    t = np.arange(len(raw))
    expected = np.interp(t, t[known], raw[known])
    series = builtin_series("co2")
    assert series.shape == (2284, 1) and series.dtype == torch.float64
    assert int((~known).sum()) == 59
    np.testing.assert_allclose(series[:, 0].numpy(), expected, rtol=0, atol=1e-12)
    assert (np.diff(frame.index.to_numpy()).astype("timedelta64[D]") == 7).all()  # evenly spaced


def test_co2_splits_baselines_and_forecaster():
    series = builtin_series("co2")
    splits = split_series(series, ["co2"])
    assert splits.borders == (0, 1598, 1826, 2284) and splits.columns == ["co2"]
    result = baselines(splits, input_len=104, horizon=13, period=BUILTIN_PERIODS["co2"])
    assert result["ridge"]["mse"] < result["seasonal_naive"]["mse"] < 0.1
    from statewise import Forecaster

    f = Forecaster("lru", input_len=32, horizon=4, d_model=8, n_layers=1)
    f.fit(series[:600], max_steps=3, progress=False)
    assert f.predict(series[-32:]).shape == (4, 1)
    with pytest.raises(ValueError, match="shape"):
        split_series(series, ["a", "b"])


def test_builtin_errors(monkeypatch):
    with pytest.raises(ValueError, match="co2"):
        builtin_series("sunspots")
    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "statsmodels" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ImportError, match="pip install statsmodels"):
        builtin_series("co2")
