"""Per-window normalisation of a forecasting network's context, and its inverse.

For each window and target channel, from the context's observed values only:

    subtract_last  b = the last observed value, a = 1                 (NLinear, Zeng et al. 2023)
    revin          b = mean, a = sqrt(var + 1e-5) (population)        (RevIN, Kim et al. 2022)
                   with a learnable affine per channel, z = gamma (y - b) / a + beta
    neither        b = 0, a = 1

The network sees z = (y - b) / a (times gamma, plus beta, for RevIN) and its outputs are
mapped back by y = scale * z + shift with scale = a / gamma and shift = b - a beta / gamma.
RevIN's gamma is exp(g) (g starts at 0) rather than a free weight, so the map back stays
increasing and forecast quantiles keep their order. A window without any observed value
gets b = 0, a = 1.
"""

from __future__ import annotations

import torch
from torch import nn

_EPS = 1e-5


class InstanceNorm(nn.Module):
    def __init__(self, n_channels: int, revin: bool, subtract_last: bool) -> None:
        super().__init__()
        self.revin, self.subtract_last = revin, subtract_last
        if revin:
            self.log_gamma = nn.Parameter(torch.zeros(n_channels))
            self.beta = nn.Parameter(torch.zeros(n_channels))

    def forward(
        self, y: torch.Tensor, observed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """y, observed (B, L, K) -> z (B, L, K), 0 where not observed; shift, scale (B, 1, K)."""
        weight = observed.to(y.dtype)
        count = weight.sum(1, keepdim=True)
        seen = count > 0
        ones = torch.ones_like(count)
        if self.revin:
            mean = (y * weight).sum(1, keepdim=True) / count.clamp_min(1)
            var = (((y - mean) * weight) ** 2).sum(1, keepdim=True) / count.clamp_min(1)
            std = torch.where(seen, (var + _EPS).sqrt(), ones)
            gamma = self.log_gamma.exp()
            z = (y - mean) / std * gamma + self.beta
            scale = std / gamma
            return z * weight, mean - scale * self.beta, scale
        if self.subtract_last:
            steps = torch.arange(y.shape[1], device=y.device).view(1, -1, 1)
            last = torch.where(observed, steps, -1).max(1, keepdim=True).values.clamp_min(0)
            shift = torch.where(seen, y.gather(1, last), torch.zeros_like(count))
            return (y - shift) * weight, shift, ones
        return y * weight, torch.zeros_like(count), ones
