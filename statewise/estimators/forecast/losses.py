"""The Forecaster's output distributions ("families") and their training losses.

The network emits P raw numbers per (horizon step, target); a family turns them into
parameters, moves the parameters between units, scores them against the data and reads
point forecasts and quantiles from them:

    studentt  (default) loc = r0, scale = softplus(r1) + 1e-4, df = 2 + softplus(r2); trained
              by negative log-likelihood. df >= 2 keeps the mean finite (df > 2, the variance),
              so the point forecast is the mean, loc, as for the other families.
    normal    loc = r0, scale = softplus(r1) + 1e-4; NLL; point = loc.
    quantile  for probabilities p_1 < ... < p_Q (each level's 0.5 -+ level/200, and 0.5):
              q_0.5 = r_mid, q above it = q_0.5 + cumsum(softplus(r_above)), below it
              likewise downwards, so quantiles never cross; the loss is the pinball loss
              rho_p(y - q) = max(p (y - q), (p - 1)(y - q)) averaged over the Q quantiles;
              point = the median.
    negbin    counts: m = r0, mean mu = softplus(m) + 1e-4 in the units of the data,
              dispersion alpha = softplus(r1) + 1e-4, variance mu + alpha mu^2; NLL of the
              counts; point = mu.
    mse       one number; squared error; point forecasts only (no quantiles).

Units. The data are scaled per series (y = a_s z + b_s) and, inside the network, per window
(RevIN or subtract-last: a_w, b_w). Both are affine, so parameters move between units by
:meth:`Family.affine`: locations and quantiles (and negbin's m) map to a z + b, scales to a z;
df and alpha have no units. Location-scale families are trained in the series-scaled units:
a change of units adds log a to the NLL, a constant of the data, so the gradients are those
of the data's units while every series is scored on one scale. negbin is trained on the
counts themselves, after the series' affine map (``trains_in_data_units``), which is why its
softplus comes after that map.

Quantiles: normal by ``torch.special.ndtri``, Student-t by
:mod:`statewise.estimators.forecast.studentt`, negbin exactly from its cumulative
probabilities (the smallest count k with P(Y <= k) >= p, summing the probabilities of 0 ..
mu + 12 sd + 12: the rest of the mass is far below any level's tail).

Interval membership (:meth:`Family.covers`, for coverage): y lies in the central interval
[q_lo, q_hi] exactly when lo <= F(y) <= hi for a continuous, increasing CDF F, so normal and
Student-t read it from one CDF evaluation instead of a quantile solve (the Student-t's
Newton iterations evaluate its CDF's quadrature about five times); the other families
compare y with their quantiles."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from statewise.errors import ArgumentError, ArgumentTypeError
from statewise.estimators.forecast.metrics import (
    crps_normal,
    crps_quantiles,
    crps_studentt,
    midpoint_probabilities,
)
from statewise.estimators.forecast.studentt import studentt_cdf, studentt_icdf, studentt_log_pdf
from statewise.models.forecast.inputs import MIN_SCALE

LOSSES = ("studentt", "normal", "quantile", "negbin", "mse")
_PMF_CHUNK = 1 << 22  # counts x elements per block of the negbin CDF


def check_levels(levels: object, name: str = "level") -> tuple[float, ...]:
    """Prediction-interval levels in percent, each in (0, 100), sorted and unique."""
    if isinstance(levels, (int, float)) and not isinstance(levels, bool):
        levels = [levels]
    if not isinstance(levels, Sequence) or isinstance(levels, str) or not levels:
        raise ArgumentTypeError(f"{name} must be a non-empty list of numbers, got {levels!r}")
    for value in levels:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ArgumentTypeError(f"{name} must hold numbers, got {value!r}")
        if not 0 < value < 100:
            raise ArgumentError(f"{name} values must lie in (0, 100), got {value!r}")
    return tuple(sorted({float(v) for v in levels}))


def level_probabilities(levels: Sequence[float]) -> list[float]:
    """The quantile probabilities of central intervals at ``levels`` (percent), ascending:
    0.5 - level/200 and 0.5 + level/200 for each level."""
    lows = [round(0.5 - level / 200, 12) for level in levels]
    return sorted(lows + [1 - p for p in lows])


def _cdf_between(cdf: torch.Tensor, level: float) -> torch.Tensor:
    """Bool: lo <= cdf <= hi, the probabilities of the central ``level``% interval."""
    low, high = level_probabilities([level])
    return (cdf >= low) & (cdf <= high)


def _standardized(params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(target - loc) / scale in float64, for a location-scale family."""
    return (target.double() - params[..., 0].double()) / params[..., 1].double()


def _masked_mean(values: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    return (values * observed).sum() / observed.sum().clamp_min(1)


class Family:
    """A distribution over one value, held as a tensor (..., n_params) of parameters."""

    name = ""
    n_params = 1
    locations: tuple[int, ...] = (0,)  # parameters that map to a z + b
    scales: tuple[int, ...] = ()  # parameters that map to a z
    raw_location: int | None = 0  # the raw number that is a location in the window's units
    trains_in_data_units = False

    def constrain(self, raw: torch.Tensor) -> torch.Tensor:
        return raw

    def affine(self, params: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor):
        """Parameters in units z -> units y = scale z + shift (shift, scale broadcast
        against params[..., 0])."""
        out = list(params.unbind(-1))
        for i in self.locations:
            out[i] = out[i] * scale + shift
        for i in self.scales:
            out[i] = out[i] * scale
        return torch.stack(out, dim=-1)

    def loss(self, params: torch.Tensor, target: torch.Tensor, observed: torch.Tensor):
        """The mean loss over the observed elements of ``target`` (params[..., 0]'s shape)."""
        safe = torch.where(observed, target, torch.zeros_like(target))
        return _masked_mean(self._pointwise_loss(params, safe), observed)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The point forecast (see the module doc)."""
        return params[..., 0]

    def quantiles(self, params: torch.Tensor, probs: Sequence[float]) -> torch.Tensor:
        """(..., len(probs)) quantiles, in the units of ``params``."""
        raise ArgumentError(
            f"loss={self.name!r} gives point forecasts only; prediction intervals (level) "
            "need a probabilistic loss: 'studentt' (the default), 'normal', 'quantile' or "
            "'negbin'"
        )

    def covers(self, params: torch.Tensor, target: torch.Tensor, level: float) -> torch.Tensor:
        """Bool (params[..., 0]'s shape): whether ``target`` lies in the central ``level``%
        interval [q_(0.5 - level/200), q_(0.5 + level/200)], bounds included."""
        low, high = self.quantiles(params, level_probabilities([level])).unbind(-1)
        return (target >= low) & (target <= high)

    def crps(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """CRPS per element (metrics.py): closed form for normal and Student-t, the
        quantile estimator for the others (the trained quantiles; negbin's on a grid of 99)."""
        grid = midpoint_probabilities(99)
        return crps_quantiles(target, self.quantiles(params, grid), grid)

    def _pointwise_loss(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Normal(Family):
    name, n_params, scales = "normal", 2, (1,)

    def constrain(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.stack([raw[..., 0], F.softplus(raw[..., 1]) + MIN_SCALE], dim=-1)

    def _pointwise_loss(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loc, scale = params[..., 0], params[..., 1]
        return -torch.distributions.Normal(loc, scale, validate_args=False).log_prob(target)

    def crps(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return crps_normal(target, params[..., 0], params[..., 1])

    def covers(self, params: torch.Tensor, target: torch.Tensor, level: float) -> torch.Tensor:
        return _cdf_between(torch.special.ndtr(_standardized(params, target)), level)

    def quantiles(self, params: torch.Tensor, probs: Sequence[float]) -> torch.Tensor:
        z = torch.special.ndtri(torch.tensor(probs, dtype=torch.float64))
        return params[..., :1] + params[..., 1:2] * z.to(params.dtype)


class StudentT(Family):
    name, n_params, scales = "studentt", 3, (1,)

    def constrain(self, raw: torch.Tensor) -> torch.Tensor:
        scale = F.softplus(raw[..., 1]) + MIN_SCALE
        return torch.stack([raw[..., 0], scale, 2 + F.softplus(raw[..., 2])], dim=-1)

    def _pointwise_loss(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loc, scale, df = params.unbind(-1)
        return torch.log(scale) - studentt_log_pdf((target - loc) / scale, df)

    def crps(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loc, scale, df = params.unbind(-1)
        return crps_studentt(target, loc, scale, df).to(params.dtype)

    def covers(self, params: torch.Tensor, target: torch.Tensor, level: float) -> torch.Tensor:
        return _cdf_between(studentt_cdf(_standardized(params, target), params[..., 2]), level)

    def quantiles(self, params: torch.Tensor, probs: Sequence[float]) -> torch.Tensor:
        # t_(1 - p) = -t_p and t_0.5 = 0: one solve per distance from the median
        distance = [round(abs(p - 0.5), 12) for p in probs]
        solved = sorted(set(distance) - {0.0})
        t = params.new_zeros(*params.shape[:-1], len(probs), dtype=torch.float64)
        if solved:
            upper = torch.tensor(solved, dtype=torch.float64) + 0.5
            t_upper = studentt_icdf(upper, params[..., 2:3].double())
            for j, (p, d) in enumerate(zip(probs, distance)):
                if d > 0:
                    t[..., j] = t_upper[..., solved.index(d)] * (1 if p > 0.5 else -1)
        t = t.to(params.dtype)
        return params[..., :1] + params[..., 1:2] * t


class Quantile(Family):
    """Pinball loss over fixed probabilities; the parameters are the quantiles."""

    name, scales = "quantile", ()

    def __init__(self, levels: Sequence[float]) -> None:
        self.probs = level_probabilities(levels)
        self.probs.insert(len(self.probs) // 2, 0.5)
        self.n_params = len(self.probs)
        self.locations = tuple(range(self.n_params))
        self.middle = self.raw_location = len(self.probs) // 2

    def constrain(self, raw: torch.Tensor) -> torch.Tensor:
        m = self.middle
        median = raw[..., m : m + 1]
        above = median + F.softplus(raw[..., m + 1 :]).cumsum(-1)
        below = median - F.softplus(raw[..., :m]).flip(-1).cumsum(-1).flip(-1)
        return torch.cat([below, median, above], dim=-1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params[..., self.middle]

    def loss(self, params: torch.Tensor, target: torch.Tensor, observed: torch.Tensor):
        safe = torch.where(observed, target, torch.zeros_like(target))
        p = torch.tensor(self.probs, dtype=params.dtype)
        error = safe[..., None] - params
        pinball = torch.maximum(p * error, (p - 1) * error).mean(-1)
        return _masked_mean(pinball, observed)

    def crps(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return crps_quantiles(target, params, self.probs)

    def quantiles(self, params: torch.Tensor, probs: Sequence[float]) -> torch.Tensor:
        index = []
        for p in probs:
            match = [i for i, q in enumerate(self.probs) if abs(q - p) < 1e-9]
            if not match:
                trained = sorted({round(abs(200 * q - 100), 9) for q in self.probs} - {0})
                raise ArgumentError(
                    f"level: loss='quantile' was trained for the levels {trained}; "
                    f"the quantile {p:g} is not among them (choose levels= when constructing)"
                )
            index.append(match[0])
        return params[..., index]


class NegativeBinomial(Family):
    name, n_params, scales = "negbin", 2, ()
    raw_location = None  # r0 becomes the mean by a softplus in the units of the counts
    trains_in_data_units = True

    def constrain(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.stack([raw[..., 0], F.softplus(raw[..., 1]) + MIN_SCALE], dim=-1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return F.softplus(params[..., 0]) + MIN_SCALE

    def _distribution(self, params: torch.Tensor) -> torch.distributions.NegativeBinomial:
        mu, alpha = self.mean(params), params[..., 1]
        r = 1 / alpha
        return torch.distributions.NegativeBinomial(
            total_count=r, probs=mu / (mu + r), validate_args=False
        )

    def _pointwise_loss(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -self._distribution(params).log_prob(target)

    def quantiles(self, params: torch.Tensor, probs: Sequence[float]) -> torch.Tensor:
        flat = params.reshape(-1, self.n_params).double()
        mu, alpha = self.mean(flat), flat[:, 1]
        top = (mu + 12 * torch.sqrt(mu + alpha * mu**2) + 12).ceil()
        p = torch.tensor(probs, dtype=torch.float64)
        out = torch.empty(flat.shape[0], len(probs), dtype=torch.float64)
        start = 0
        while start < flat.shape[0]:
            counts = int(top[start]) + 1
            stop = start + max(1, _PMF_CHUNK // counts)
            counts = int(top[start:stop].max()) + 1
            k = torch.arange(counts, dtype=torch.float64)[:, None]
            pmf = self._distribution(flat[start:stop]).log_prob(k).exp()  # (counts, n)
            cdf = pmf.cumsum(0).T.contiguous()  # (n, counts)
            out[start:stop] = torch.searchsorted(cdf, p.repeat(cdf.shape[0], 1)).double()
            start = stop
        return out.to(params.dtype).reshape(*params.shape[:-1], len(probs))


class MeanSquaredError(Family):
    name = "mse"

    def _pointwise_loss(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (params[..., 0] - target) ** 2


def make_family(loss: str, levels: Sequence[float]) -> Family:
    """The family named ``loss`` (``levels`` only matter for "quantile")."""
    if loss == "quantile":
        return Quantile(levels)
    families = {
        "studentt": StudentT,
        "normal": Normal,
        "negbin": NegativeBinomial,
        "mse": MeanSquaredError,
    }
    if loss not in families:
        raise ArgumentError(f"loss must be one of {LOSSES}, got {loss!r}")
    return families[loss]()
