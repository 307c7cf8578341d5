"""One cell of ``statewise bench forecast``: one layer fitted for one horizon H and scored on
the validation and test windows of a multivariate series (rows, K).

Parts (:func:`split_parts`): train rows [0, n_train), validation rows [n_train, n_train +
n_val), test rows after them (statewise.tasks.forecast.split_rows: the ETT 12/4/4 months,
8640 / 2880 / 2880 rows, for a file of >= 14400 rows, else 70/10/20 %). The validation and
test parts are preceded by input_len context rows, so a window's context may reach back
into the part before (the Informer / PatchTST loaders) while its H targets lie inside the
part: a part of n rows has n - H + 1 stride-1 windows. The Forecaster scales every column
by the mean and population std of the training rows only (scaler="standard"), and keeps
the weights of the epoch with the lowest validation MSE.

Scores, on the train-scaled data, averaged over windows, horizon steps and channels (the
validation windows get the first two, and coverage and CRPS below for a distribution):

    mse, mae         over all W windows: none is dropped
    drop_last[name]  the same over the first floor(W / b) * b windows, what a test loader
                     of batch size b with drop_last=True scores (DROP_LAST_BATCHES: the
                     batch sizes of PatchTST's and DLinear's ETTh1 scripts)

Probabilistic check, for a loss with a distribution (not "mse"): with q_p the forecast's
p-quantile and y a test target,

    coverage           the fraction of y with q_0.1 <= y <= q_0.9 (the 80% interval)
    crps               the mean CRPS of the forecast distribution (metrics.py)
    gaussian_coverage  the same for N(point, sd_jk^2): the point forecast with sd_jk^2 the
    gaussian_crps      mean squared residual of the training windows at horizon step j and
                       channel k (the issue's reference, as the Forecaster's closed-form
                       baselines build their intervals); in-sample residuals, so that
                       Gaussian tends to be too narrow
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from statewise.estimators.forecast.arrays import array_panel, full_context_windows
from statewise.estimators.forecast.forecaster import Forecaster
from statewise.estimators.forecast.losses import level_probabilities
from statewise.estimators.forecast.metrics import crps_normal
from statewise.estimators.forecast.training import forecast
from statewise.tasks.forecast import split_rows

LEVEL = 80  # the interval of the probabilistic check, in percent
DROP_LAST_BATCHES = {"patchtst_128": 128, "dlinear_8": 8}
CHUNK = 64  # windows per forward pass while scoring: 1.7x faster than 1024 here (cache)


@dataclass
class Parts:
    """Raw (unscaled) rows (n, K): train, and val / test each preceded by input_len rows."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor


def split_parts(data: torch.Tensor, input_len: int) -> Parts:
    """The three parts of ``data`` (rows, K); needs n_train >= input_len."""
    n_train, n_val, n_test = split_rows(data.shape[0])
    val_end, test_end = n_train + n_val, n_train + n_val + n_test
    return Parts(
        data[:n_train], data[n_train - input_len : val_end], data[val_end - input_len : test_end]
    )


def run_cell(
    parts: Parts,
    layer: str,
    horizon: int,
    input_len: int,
    options: dict[str, Any],
    limits: dict[str, Any],
    progress: bool,
) -> dict[str, Any]:
    """Fit ``Forecaster(layer, input_len, horizon, **options)`` on the training part, keeping
    the best epoch by validation MSE, and score it (see the module doc). TrainingDiverged
    propagates."""
    f = Forecaster(layer, input_len, horizon, **options)
    start = time.perf_counter()
    f.fit(parts.train, parts.val, **limits, progress=progress)
    train_s = time.perf_counter() - start
    curve = [[h["step"], h["val_mse"]] for h in f.history if "val_mse" in h]
    test, probabilistic = scored_test_split(f, parts.train, parts.test)
    train_windows = parts.train.shape[0] - input_len - horizon + 1
    steps = len(f.history)
    return {
        "layer": layer,
        "horizon": horizon,
        "input_len": input_len,
        "config": f.options,
        "train_s": round(train_s, 2),
        "steps": steps,
        "epochs": round(steps / math.ceil(train_windows / f.options["batch_size"]), 2),
        "tokens_per_s": round(f.tokens_per_s, 1),
        "best_step": min(curve, key=lambda point: point[1])[0],
        "val_curve": curve,
        "val": score(f, parts.val)["all"],
        "test": test,
        "probabilistic": probabilistic,
    }


def forecasts(f: Forecaster, series: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(parameters (B, H, K, P), targets (B, H, K)) of every full-context window of
    ``series`` (raw rows), in order, both in the train-scaled units, float64."""
    panel = array_panel(series, f.shift, f.scale, f.input_len)
    s, c = full_context_windows(panel, f.horizon)
    to_scaled = (-f.shift / f.scale, 1 / f.scale)  # y = scale z + shift, inverted
    for sb, cb in zip(s.split(CHUNK), c.split(CHUNK)):
        params = forecast(f.model, f.family, panel, (sb, cb), f.horizon)
        yield f.family.affine(params, *to_scaled), panel.targets(sb, cb, f.horizon)[0].double()


def window_sums(
    f: Forecaster, series: torch.Tensor, residual_sd: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Per window (W,), sums over its H x K elements: "mse" and "mae" (squared and absolute
    errors); for a distribution also "coverage" (targets inside the LEVEL% interval) and
    "crps"; with ``residual_sd`` (H, K) the same two for the Gaussian, prefixed "gaussian_"."""
    probs = level_probabilities([LEVEL])
    z = float(torch.special.ndtri(torch.tensor(probs[1], dtype=torch.float64)))
    sums: dict[str, list[torch.Tensor]] = defaultdict(list)

    def add(name: str, values: torch.Tensor) -> None:
        sums[name].append(values.double().sum((1, 2)))

    for params, y in forecasts(f, series):
        point = f.family.mean(params)
        error = point - y
        add("mse", error**2)
        add("mae", error.abs())
        if f.options["loss"] != "mse":
            add("coverage", f.family.covers(params, y, LEVEL))
            add("crps", f.family.crps(params, y))
        if residual_sd is not None:
            sd = residual_sd.expand_as(point)
            add("gaussian_coverage", error.abs() <= z * sd)
            add("gaussian_crps", crps_normal(y, point, sd))
    return {name: torch.cat(parts) for name, parts in sums.items()}


def score(
    f: Forecaster, series: torch.Tensor, residual_sd: torch.Tensor | None = None
) -> dict[str, dict[str, float]]:
    """Means over all windows ("all") and over the windows a drop_last loader keeps."""
    sums = window_sums(f, series, residual_sd)
    per_window = f.horizon * int(f.shift.shape[0])
    total = len(sums["mse"])

    def means(first: int) -> dict[str, float]:
        kept = {name: float(v[:first].sum() / (first * per_window)) for name, v in sums.items()}
        return {"windows": first, **kept}

    out = {"all": means(total)}
    for name, batch in DROP_LAST_BATCHES.items():
        out[name] = means(total // batch * batch) if total >= batch else {"windows": 0}
    return out


def scored_test_split(
    f: Forecaster, train: torch.Tensor, test: torch.Tensor
) -> tuple[dict[str, Any], dict[str, float] | None]:
    """(MSE and MAE over all test windows and with drop_last (see the module doc), the
    probabilistic check or None for loss="mse"), from one pass over the test windows: the
    coverage and CRPS of the forecast distribution and of the Gaussian of the training
    residuals."""
    sd = None if f.options["loss"] == "mse" else residual_sd(f, train)
    scores = score(f, test, sd)
    keep = ("windows", "mse", "mae")
    drop_last = {name: {k: v for k, v in scores[name].items() if k in keep} for name in scores}
    point = {**drop_last.pop("all"), "drop_last": drop_last}
    if sd is None:
        return point, None
    names = ("coverage", "crps", "gaussian_coverage", "gaussian_crps")
    return point, {"level": LEVEL, **{name: scores["all"][name] for name in names}}


def residual_sd(f: Forecaster, train: torch.Tensor) -> torch.Tensor:
    """(H, K) root mean squared residual of the point forecast over the training windows."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    for params, y in forecasts(f, train):
        total = total + ((y - f.family.mean(params)) ** 2).sum(0)
        count += y.shape[0]
    return (total / count).sqrt()
