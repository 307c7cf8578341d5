"""Forecast accuracy metrics, and the table of a cross-validation (:func:`evaluate_cv`).

The averaged metrics leave out NaN targets (missing values):

    mse       mean (y - yhat)^2
    mae       mean |y - yhat|
    mase      mae / mean |y_t - y_(t-m)| over the training rows: the in-sample MAE of the
              seasonal naive forecast with season m (Hyndman & Koehler 2006)
    coverage  the fraction of y inside [lo, hi]

CRPS(F, y) = integral (F(x) - 1{x >= y})^2 dx, per element:

    normal     closed form (Gneiting & Raftery 2007), z = (y - mu) / sigma:
               sigma [z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi)]
    student-t  closed form (Jordan, Krueger & Lerch 2019, scoringRules' crps_t), nu > 1:
               sigma [z (2 F(z) - 1) + 2 f(z) (nu + z^2) / (nu - 1)
                      - 2 sqrt(nu) B(1/2, nu - 1/2) / ((nu - 1) B(1/2, nu / 2)^2)]
               with F, f the standard t's CDF (studentt.py) and density
    quantiles  CRPS = 2 integral_0^1 rho_p(y - q_p) dp, estimated by the mean over the given
               probabilities, 2/Q sum_j rho_(p_j)(y - q_(p_j)) (rho the pinball loss): with
               the midpoints p_j = (j - 1/2) / Q of an even grid this is the midpoint rule and
               tends to the CRPS as Q grows; with a few interval levels (all a forecast
               DataFrame holds) it is coarse, the estimator utilsforecast's scaled_crps uses
    samples    mean |X_i - y| - 1/(2 S^2) sum_ij |X_i - X_j| (Gneiting & Raftery 2007), the
               pair sum from the sorted samples: sum_ij |X_i - X_j| = 2 sum_i (2i - S - 1) X_(i)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from statewise.errors import DataError
from statewise.estimators.forecast.frame import DS, ID, Y, import_pandas, is_interval_column
from statewise.estimators.forecast.studentt import studentt_cdf, studentt_log_pdf

CV_COLUMNS = (ID, DS, "cutoff", Y)


def _pair(y: Any, yhat: Any) -> tuple[np.ndarray, np.ndarray]:
    y, yhat = np.broadcast_arrays(np.asarray(y, np.float64), np.asarray(yhat, np.float64))
    keep = ~np.isnan(y)
    return y[keep], yhat[keep]


def mse(y: Any, yhat: Any) -> float:
    y, yhat = _pair(y, yhat)
    return float(np.mean((y - yhat) ** 2))


def mae(y: Any, yhat: Any) -> float:
    y, yhat = _pair(y, yhat)
    return float(np.mean(np.abs(y - yhat)))


def mase(y: Any, yhat: Any, insample: Any, season_length: int = 1) -> float:
    """MAE scaled by the in-sample seasonal naive MAE of ``insample`` (1-d, in time order)."""
    history = np.asarray(insample, np.float64)
    naive = np.abs(history[season_length:] - history[:-season_length])
    naive = naive[~np.isnan(naive)]
    if naive.size == 0 or naive.mean() == 0:
        raise DataError("mase: the in-sample seasonal naive error is zero or undefined")
    return mae(y, yhat) / float(naive.mean())


def coverage(y: Any, lo: Any, hi: Any) -> float:
    y, lo, hi = (np.asarray(a, np.float64) for a in np.broadcast_arrays(y, lo, hi))
    keep = ~np.isnan(y)
    return float(np.mean((y[keep] >= lo[keep]) & (y[keep] <= hi[keep])))


def crps_normal(y: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    z = (y - loc) / scale
    normal = torch.distributions.Normal(torch.zeros_like(z), torch.ones_like(z))
    pdf = normal.log_prob(z).exp()
    return scale * (z * (2 * normal.cdf(z) - 1) + 2 * pdf - 1 / math.sqrt(math.pi))


def crps_studentt(
    y: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, df: torch.Tensor
) -> torch.Tensor:
    """Closed form (see the module doc), float64; df > 1."""
    y, loc, scale, df = (torch.as_tensor(t).double() for t in (y, loc, scale, df))
    z = (y - loc) / scale
    log_pdf = studentt_log_pdf(z, df)
    beta_half = _log_beta(0.5, df - 0.5) - 2 * _log_beta(0.5, df / 2)
    constant = 2 * df.sqrt() * beta_half.exp() / (df - 1)
    spread = 2 * log_pdf.exp() * (df + z**2) / (df - 1)
    return scale * (z * (2 * studentt_cdf(z, df) - 1) + spread - constant)


def _log_beta(a: float | torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(a, dtype=b.dtype)
    return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)


def crps_quantiles(y: torch.Tensor, quantiles: torch.Tensor, probs: Sequence[float]):
    """2/Q sum_j pinball_(p_j)(y - q_j): y (...), quantiles (..., Q)."""
    p = torch.as_tensor(probs, dtype=quantiles.dtype)
    error = y[..., None] - quantiles
    return 2 * torch.maximum(p * error, (p - 1) * error).mean(-1)


def crps_samples(y: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """mean |X - y| - 1/2 mean |X - X'|: y (...), samples (..., S)."""
    s = samples.shape[-1]
    ordered = samples.sort(-1).values
    rank = torch.arange(1, s + 1, dtype=samples.dtype)
    pairs = 2 * ((2 * rank - s - 1) * ordered).sum(-1)
    return (samples - y[..., None]).abs().mean(-1) - pairs / (2 * s * s)


def midpoint_probabilities(count: int = 99) -> list[float]:
    """(j - 1/2) / count, j = 1..count: the grid of the quantile estimator of the CRPS."""
    return [(j + 0.5) / count for j in range(count)]


def evaluate_cv(cv_df: Any, train_df: Any = None, season_length: int = 1) -> Any:
    """Metrics of a cross-validation (or any forecast frame with ``y``), per series and
    overall: a long DataFrame with columns ``unique_id``, ``metric`` and one column per
    model (every column that is not unique_id, ds, cutoff, y or an interval).

    Metrics: mse, mae; mase when ``train_df`` is given (the scale from each series' rows of
    train_df up to its first cutoff, season ``season_length``); coverage-<level> for every
    level with both interval columns; crps from the quantiles the interval columns hold,
    with the point forecast as the median (exact for the Student-t, normal and quantile
    heads, whose point is their median), the coarse quantile estimator of the module doc.
    The rows with unique_id "overall" are the means over the series."""
    pd = import_pandas()
    if Y not in cv_df.columns or ID not in cv_df.columns:
        raise DataError("evaluate_cv needs the columns unique_id and y (a cross-validation)")
    models = [c for c in cv_df.columns if c not in CV_COLUMNS and not is_interval_column(c)]
    if not models:
        raise DataError("evaluate_cv found no forecast column beside unique_id, ds, cutoff, y")
    rows = []
    for uid, part in cv_df.groupby(ID, sort=True):
        insample = _insample(train_df, uid, part)
        scores = {m: _series_scores(part, m, insample, season_length) for m in models}
        for metric in scores[models[0]]:
            rows.append({ID: uid, "metric": metric, **{m: scores[m][metric] for m in models}})
    table = pd.DataFrame(rows)
    overall = table.groupby("metric", sort=False)[models].mean().reset_index()
    overall.insert(0, ID, "overall")
    return pd.concat([table, overall], ignore_index=True)


def _insample(train_df: Any, uid: Any, part: Any) -> np.ndarray | None:
    if train_df is None:
        return None
    rows = train_df[train_df[ID] == uid].sort_values(DS)
    if "cutoff" in part.columns:
        rows = rows[rows[DS] <= part["cutoff"].min()]
    return rows[Y].to_numpy(dtype=np.float64)


def _series_scores(
    part: Any, model: str, insample: np.ndarray | None, season_length: int
) -> dict[str, float]:
    y, point = part[Y].to_numpy(np.float64), part[model].to_numpy(np.float64)
    scores = {"mse": mse(y, point), "mae": mae(y, point)}
    if insample is not None:
        scores["mase"] = mase(y, point, insample, season_length)
    levels = sorted(
        float(c.rsplit("-", 1)[1])
        for c in part.columns
        if c.startswith(f"{model}-lo-") and c.replace("-lo-", "-hi-") in part.columns
    )
    if not levels:
        return scores
    probs, columns = [0.5], [model]
    for level in levels:
        lo, hi = f"{model}-lo-{level:g}", f"{model}-hi-{level:g}"
        scores[f"coverage-{level:g}"] = coverage(y, part[lo], part[hi])
        probs += [0.5 - level / 200, 0.5 + level / 200]
        columns += [lo, hi]
    keep = ~np.isnan(y)
    quantiles = torch.tensor(part[columns].to_numpy(np.float64)[keep])
    scores["crps"] = float(crps_quantiles(torch.tensor(y[keep]), quantiles, probs).mean())
    return scores
