"""Seasonal naive and ridge on lags as forecasting networks without gradient training, on
the same contract as the recurrent forecaster (inputs.py), so the Forecaster fits,
predicts and cross-validates them with the same code.

On the (per-window normalised, revin.py) context z of each target channel:

    seasonal naive  z_hat[L + j] = z[L + j - p * ceil((j + 1) / p)], j = 0..H-1 (the value
                    one period p before, repeated; statewise.tasks.forecast.seasonal_naive)
    ridge on lags   z_hat = [z_1..z_L, 1] W, fitted in closed form on the training windows
                    (tasks.forecast.solve_ridge: float64, the bias not penalised); per
                    channel with shared W when channel-independent, else on the flattened
                    L * K context to the H * K horizon

Both are point forecasts; as probabilistic forecasts they are Gaussians around the point
with the standard deviation of the training windows' residuals, per horizon step and
channel (in the normalised units, so it scales with each window and series):

    raw = (z_hat, softplus^-1(sd_jk - 1e-4))   for the "normal" family,  (z_hat,) for "mse".

``fit_windows(batches)`` fits both (ridge needs two passes over the windows: the moments,
then the residuals); only windows whose every target is observed are used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from statewise.errors import ArgumentError, DataError
from statewise.models.forecast.inputs import MIN_SCALE, ForecastInputs, ForecastSpec
from statewise.models.forecast.revin import InstanceNorm
from statewise.tasks.forecast import ridge_moments, ridge_predict, seasonal_naive, solve_ridge

Batches = Callable[[], Iterable[tuple[ForecastInputs, torch.Tensor, torch.Tensor]]]


class ClosedFormForecaster(nn.Module):
    """A point forecast in the normalised units plus a Gaussian of the training residuals."""

    def __init__(self, spec: ForecastSpec) -> None:
        super().__init__()
        if spec.n_params not in (1, 2):
            raise ArgumentError("seasonal naive and ridge give the 'normal' or 'mse' loss only")
        self.spec = spec
        self.norm = InstanceNorm(spec.n_targets, spec.revin, spec.subtract_last)
        self.register_buffer("residual_sd", torch.ones(spec.horizon, spec.n_targets))

    def point(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L, K) normalised context -> (B, H, K) point forecast."""
        raise NotImplementedError

    def forward(self, inputs: ForecastInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z, shift, scale = self.norm(inputs.y, inputs.observed)
        point = self.point(z)
        if self.spec.n_params == 1:
            return point[..., None], shift, scale
        sd = (self.residual_sd - MIN_SCALE).clamp_min(1e-6)
        raw_sd = sd + torch.log(-torch.expm1(-sd))  # softplus^-1
        return torch.stack([point, raw_sd.expand_as(point)], dim=-1), shift, scale

    @torch.no_grad()
    def fit_windows(self, batches: Batches) -> None:
        squares = torch.zeros(self.spec.horizon, self.spec.n_targets, dtype=torch.float64)
        count = torch.zeros_like(squares)
        for inputs, target, observed in batches():
            z, shift, scale = self.norm(inputs.y, inputs.observed)
            error = (target - shift) / scale - self.point(z)
            squares += (error.double() ** 2 * observed).sum(0)
            count += observed.sum(0)
        self.residual_sd.copy_((squares / count.clamp_min(1)).sqrt().float())


class SeasonalNaive(ClosedFormForecaster):
    def __init__(self, spec: ForecastSpec, period: int) -> None:
        super().__init__(spec)
        if period > spec.input_len:
            raise ArgumentError(
                f"seasonal naive needs input_len >= season_length, got {spec.input_len} < {period}"
            )
        self.period = period

    def point(self, z: torch.Tensor) -> torch.Tensor:
        return seasonal_naive(z, self.spec.horizon, self.period)


class RidgeOnLags(ClosedFormForecaster):
    def __init__(self, spec: ForecastSpec, lam: float) -> None:
        super().__init__(spec)
        self.lam = lam
        k = 1 if spec.channel_independent else spec.n_targets
        self.register_buffer("weights", torch.zeros(spec.input_len * k + 1, spec.horizon * k))

    def point(self, z: torch.Tensor) -> torch.Tensor:
        x = self._per_channel(z)
        out = ridge_predict(self.weights.double(), x, self.spec.horizon)
        return self._from_channels(out, z.shape[0]).to(z.dtype)

    @torch.no_grad()
    def fit_windows(self, batches: Batches) -> None:
        gram, xty, n = 0.0, 0.0, 0
        for inputs, target, observed in batches():
            keep = observed.all(2).all(1)
            z, shift, scale = self.norm(inputs.y[keep], inputs.observed[keep])
            x = self._per_channel(z)
            y = self._per_channel((target[keep] - shift) / scale)
            g, t = ridge_moments(x, y)
            gram, xty, n = gram + g, xty + t, n + x.shape[0]
        if n == 0:
            raise DataError("ridge has no training window with every target observed")
        self.weights.copy_(solve_ridge(gram, xty, n, self.lam).float())
        super().fit_windows(batches)

    def _per_channel(self, z: torch.Tensor) -> torch.Tensor:
        if not self.spec.channel_independent:
            return z
        return z.transpose(1, 2).reshape(-1, z.shape[1], 1)

    def _from_channels(self, out: torch.Tensor, batch: int) -> torch.Tensor:
        if not self.spec.channel_independent:
            return out
        return out.reshape(batch, -1, out.shape[1]).transpose(1, 2)
