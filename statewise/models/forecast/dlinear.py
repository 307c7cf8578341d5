"""DLinear (Zeng et al. 2023, "Are Transformers Effective for Time Series Forecasting?"), a
built-in baseline on the same contract as the recurrent forecaster (inputs.py).

For each target channel of the (per-window normalised, revin.py) context z:

    trend    = moving average of z over ``kernel`` steps, the ends padded by repeating the
               first and last value ((kernel - 1) // 2 in front, kernel // 2 behind), so the
               trend has the length of z (DLinear's series_decomp)
    seasonal = z - trend
    raw      = W_t trend + W_s seasonal + bias       two linear maps over time, L -> H * P

The weights are shared by the channels (DLinear's default, individual=False), so every
channel is its own sequence whatever ``channel_independent`` says. Covariates, the
observed channel and series embeddings are not read: DLinear sees the target only (values
not observed are 0 after normalisation). kernel = 25 is the paper's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from statewise.models.forecast.inputs import ForecastInputs, ForecastSpec
from statewise.models.forecast.revin import InstanceNorm


def moving_average(z: torch.Tensor, kernel: int) -> torch.Tensor:
    """z (B, L, K) -> its moving average over ``kernel`` steps with edge padding (B, L, K)."""
    front, back = z[:, :1].expand(-1, (kernel - 1) // 2, -1), z[:, -1:].expand(-1, kernel // 2, -1)
    padded = torch.cat([front, z, back], dim=1).transpose(1, 2)  # (B, K, L + kernel - 1)
    return F.avg_pool1d(padded, kernel, stride=1).transpose(1, 2)


class DLinear(nn.Module):
    def __init__(self, spec: ForecastSpec, kernel: int = 25) -> None:
        super().__init__()
        self.spec, self.kernel = spec, kernel
        self.norm = InstanceNorm(spec.n_targets, spec.revin, spec.subtract_last)
        self.trend = nn.Linear(spec.input_len, spec.horizon * spec.n_params)
        self.seasonal = nn.Linear(spec.input_len, spec.horizon * spec.n_params)

    def forward(self, inputs: ForecastInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z, shift, scale = self.norm(inputs.y, inputs.observed)
        trend = moving_average(z, self.kernel)
        raw = self.trend(trend.transpose(1, 2)) + self.seasonal((z - trend).transpose(1, 2))
        batch, k = z.shape[0], z.shape[2]
        raw = raw.view(batch, k, self.spec.horizon, self.spec.n_params).transpose(1, 2)
        return raw, shift, scale
