"""Time-series forecasting data: CSV reading, a built-in series, splits, windows, metrics and
two baselines.

Built-in series (``builtin_series(name)``, read from a file an installed wheel ships, no
network):
    "co2"   Mauna Loa atmospheric CO2 (ppm), weekly from 1958-03-29 to 2001-12-29, 2284 rows,
            from statsmodels/datasets/co2/co2.csv (statsmodels is not imported, only its
            file is read; without statsmodels installed the error names ``pip install
            statsmodels``). 59 weeks have no value; they are filled by linear interpolation
            between the nearest observed weeks (the rows are evenly spaced, 7 days apart).
            Seasonal period: 52 rows (``BUILTIN_PERIODS``). The 70/10/20 % split applies.

Split (``split_rows``): a file with >= 14400 rows uses the ETT convention of Informer
(Zhou et al. 2021) and S4: 12 months of hourly rows for training, the next 4 for
validation, the next 4 for testing (8640 / 2880 / 2880 rows; rows after 14400 are unused).
A shorter file is split 70 / 10 / 20 % (train / val / test, rounded down, the test part
takes the remainder).

Normalisation: each column is standardised with the mean and standard deviation
(population, ddof=0, as sklearn's StandardScaler) of the training rows only.
``series_statistics`` is the general form the Forecaster uses per series and per column,
NaN (missing) values left out: "standard" (mean, population std), "robust" (median,
interquartile range q75 - q25, the median/IQR of sklearn's RobustScaler) or None (0, 1);
a scale of 0 (a constant column) becomes 1.

Windows: ``windows(series, input_len, horizon)`` cuts every (context, target) pair with
stride 1. For the validation and test parts the contexts may reach back into the rows
before the part (as the Informer/S4 data loaders do), so every row of the part is a target
of some window; ``Splits.part(name, input_len)`` returns those rows.

Metrics: MSE and MAE averaged over windows, horizon steps and channels, on normalised data.

Baselines, computed on the same windows:
    seasonal naive  y_hat[T + h] = x[T + h - period * ceil(h / period)] (period 24 for
                    hourly data): the value one period before, repeated over the horizon.
    ridge on lags   y_hat = [x_window, 1] W, one linear map from the flattened context
                    (input_len * C values) to the flattened horizon, fitted in closed form
                    W = (X^T X + lam * n * I')^{-1} X^T Y in float64 with
                    ``torch.linalg.solve``; n is the number of training windows and I' the
                    identity with a 0 for the bias (not penalised), so lam is the penalty
                    on ||w||^2 relative to the mean squared error (lam = 1e-3 by default).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

from statewise.errors import DataError
from statewise.tasks.packaged import package_file

ETT_ROWS = (12 * 30 * 24, 4 * 30 * 24, 4 * 30 * 24)  # 8640, 2880, 2880
FRACTIONS = (0.7, 0.1, 0.2)
BUILTIN = {"co2": ("statsmodels", "datasets/co2/co2.csv", "statsmodels")}
BUILTIN_PERIODS = {"co2": 52}
SCALERS = ("standard", "robust", None)


def read_csv(
    path: str | Path, columns: list[str] | None = None, target: str | None = None
) -> tuple[torch.Tensor, list[str]]:
    """The numeric columns of a CSV with a header row, as a float64 tensor (rows, C).

    columns: names to read; None means every column except the first (a date column)
    when ``target`` is None, or ``[target]`` (univariate) when it is given. With both given,
    the target is moved to the last position, as Informer does for multivariate runs.
    """
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if columns is None:
            columns = [target] if target is not None else header[1:]
        elif target is not None:
            columns = [c for c in columns if c != target] + [target]
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(f"columns {missing} are not in {path}; it has {header}")
        rows = [[float(row[c]) for c in columns] for row in reader]
    if not rows:
        raise DataError(f"{path} has no data rows")
    return torch.tensor(rows, dtype=torch.float64), list(columns)


def builtin_series(name: str) -> torch.Tensor:
    """A built-in series (see the module doc) as float64 (rows, 1), gaps interpolated."""
    if name not in BUILTIN:
        raise DataError(
            f"unknown built-in series {name!r}; the built-in series are {list(BUILTIN)}"
        )
    package, relative, pip_name = BUILTIN[name]
    with open(package_file(package, relative, pip_name), newline="", encoding="utf-8") as f:
        values = [float(row[name]) if row[name] else float("nan") for row in csv.DictReader(f)]
    return interpolate_gaps(torch.tensor(values, dtype=torch.float64))[:, None]


def interpolate_gaps(x: torch.Tensor) -> torch.Tensor:
    """Fill the NaNs of an evenly spaced 1-d series by linear interpolation between the nearest
    observed neighbours; NaNs before the first or after the last observation take its value."""
    known = torch.nonzero(~torch.isnan(x)).flatten()
    if known.numel() == 0:
        raise DataError("the series has no observed values")
    if known.numel() == 1:
        return torch.full_like(x, float(x[known[0]]))
    t = torch.arange(x.shape[0])
    right = torch.searchsorted(known, t).clamp(1, known.numel() - 1)
    t0, t1 = known[right - 1], known[right]
    w = ((t - t0).double() / (t1 - t0).double()).clamp(0, 1)
    out = x[t0] * (1 - w) + x[t1] * w
    return torch.where(torch.isnan(x), out.to(x.dtype), x)


def split_rows(n: int) -> tuple[int, int, int]:
    """(train, val, test) row counts: ETT's 12/4/4 months if n >= 14400, else 70/10/20 %."""
    if n >= sum(ETT_ROWS):
        return ETT_ROWS
    n_train, n_val = int(n * FRACTIONS[0]), int(n * FRACTIONS[1])
    return n_train, n_val, n - n_train - n_val


@dataclass
class Splits:
    """A normalised series with the borders of its train / val / test parts."""

    data: torch.Tensor  # (rows, C), normalised with the training statistics
    mean: torch.Tensor  # (C,)
    std: torch.Tensor  # (C,)
    borders: tuple[int, int, int, int]  # 0, end of train, end of val, end of test
    columns: list[str]

    def rows(self, name: str) -> int:
        i = _part_index(name)
        return self.borders[i + 1] - self.borders[i]

    def part(self, name: str, input_len: int = 0) -> torch.Tensor:
        """The rows of part ``name`` preceded by up to ``input_len`` rows of context."""
        i = _part_index(name)
        start = max(0, self.borders[i] - input_len)
        return self.data[start : self.borders[i + 1]]


def _part_index(name: str) -> int:
    parts = ("train", "val", "test")
    if name not in parts:
        raise DataError(f"part must be one of {parts}, got {name!r}")
    return parts.index(name)


def load_splits(
    path: str | Path, target: str | None = "OT", columns: list[str] | None = None
) -> Splits:
    """Read, split and normalise a CSV (univariate ``target`` by default)."""
    return split_series(*read_csv(path, columns, target))


def split_series(data: torch.Tensor, columns: list[str]) -> Splits:
    """Split and normalise a series (rows, C), e.g. ``split_series(builtin_series("co2"),
    ["co2"])``."""
    if data.dim() != 2 or data.shape[1] != len(columns):
        raise DataError(
            f"data must have shape (rows, {len(columns)}) for columns {columns}, "
            f"got {tuple(data.shape)}"
        )
    n_train, n_val, n_test = split_rows(data.shape[0])
    borders = (0, n_train, n_train + n_val, n_train + n_val + n_test)
    mean, std = train_statistics(data[:n_train])
    return Splits((data - mean) / std, mean, std, borders, list(columns))


def train_statistics(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and population std of ``train`` (rows, C); a constant column gets 1."""
    return series_statistics(train, "standard")


def series_statistics(
    values: torch.Tensor, scaler: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column (shift, scale) of ``values`` (rows, C) by ``scaler`` (one of SCALERS),
    NaN values left out; a column without any value gets NaN, a scale of 0 becomes 1."""
    if scaler not in SCALERS:
        raise DataError(f"scaler must be one of {SCALERS}, got {scaler!r}")
    width = values.shape[1:]
    if scaler is None:
        return torch.zeros(width, dtype=values.dtype), torch.ones(width, dtype=values.dtype)
    if scaler == "standard":
        shift = values.nanmean(dim=0)
        scale = ((values - shift) ** 2).nanmean(dim=0).sqrt()
    else:
        q = torch.tensor([0.25, 0.5, 0.75], dtype=values.dtype)
        low, shift, high = values.nanquantile(q, dim=0)
        scale = high - low
    return shift, torch.where(scale > 0, scale, torch.ones_like(scale))


def windows(
    series: torch.Tensor, input_len: int, horizon: int, stride: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """All (context, target) pairs of ``series`` (rows, C): x (W, input_len, C), y (W, horizon, C).

    Window i is x = series[i*s : i*s + input_len], y = series[i*s + input_len : ... + horizon].
    """
    if series.dim() != 2:
        raise DataError(f"series must have shape (rows, channels), got {tuple(series.shape)}")
    if input_len <= 0 or horizon <= 0 or stride <= 0:
        raise DataError("input_len, horizon and stride must be positive")
    span = input_len + horizon
    if series.shape[0] < span:
        raise DataError(
            f"series has {series.shape[0]} rows, fewer than input_len + horizon = {span}"
        )
    cut = series.unfold(0, span, stride).transpose(1, 2)  # (W, span, C)
    return cut[:, :input_len].contiguous(), cut[:, input_len:].contiguous()


def mse(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(((pred - target) ** 2).mean())


def mae(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float((pred - target).abs().mean())


def seasonal_naive(x: torch.Tensor, horizon: int, period: int = 24) -> torch.Tensor:
    """x (W, input_len, C) -> (W, horizon, C): each step repeats the value one period earlier."""
    if x.shape[1] < period:
        raise DataError(f"seasonal naive needs input_len >= period = {period}")
    idx = x.shape[1] - period + torch.arange(horizon) % period
    return x[:, idx]


def fit_ridge(x: torch.Tensor, y: torch.Tensor, lam: float = 1e-3) -> torch.Tensor:
    """Closed-form ridge from flattened contexts (+ bias) to flattened targets (float64)."""
    return solve_ridge(*ridge_moments(x, y), x.shape[0], lam)


def ridge_moments(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(X^T X, X^T Y) of the windows x (W, input_len, C), y (W, horizon, C) with the bias
    feature; sums over windows, so batches of windows add up."""
    features = _ridge_features(x)
    return features.T @ features, features.T @ y.reshape(x.shape[0], -1).double()


def solve_ridge(gram: torch.Tensor, xty: torch.Tensor, n: int, lam: float) -> torch.Tensor:
    """W = (X^T X + lam * n * I')^{-1} X^T Y, I' without the bias (see the module doc)."""
    penalty = torch.eye(gram.shape[0], dtype=torch.float64) * lam * n
    penalty[-1, -1] = 0.0  # the bias is not penalised
    return torch.linalg.solve(gram + penalty, xty)


def ridge_predict(weights: torch.Tensor, x: torch.Tensor, horizon: int) -> torch.Tensor:
    out = _ridge_features(x) @ weights
    return out.view(x.shape[0], horizon, x.shape[2]).to(x.dtype)


def _ridge_features(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(x.shape[0], -1).double()
    return torch.cat([flat, torch.ones(flat.shape[0], 1, dtype=torch.float64)], dim=1)


def baselines(
    splits: Splits,
    input_len: int,
    horizon: int,
    part: str = "test",
    period: int = 24,
    lam: float = 1e-3,
) -> dict[str, dict[str, float]]:
    """Seasonal naive and ridge (fitted on the training windows) on the windows of ``part``."""
    x_train, y_train = windows(splits.part("train"), input_len, horizon)
    x, y = windows(splits.part(part, input_len), input_len, horizon)
    ridge = ridge_predict(fit_ridge(x_train, y_train, lam), x, horizon)
    naive = seasonal_naive(x, horizon, period)
    return {
        "seasonal_naive": {"mse": mse(naive, y), "mae": mae(naive, y)},
        "ridge": {"mse": mse(ridge, y), "mae": mae(ridge, y)},
    }
