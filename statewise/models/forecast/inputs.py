"""What every forecasting network reads (:class:`ForecastInputs`) and the sizes it is built
for (:class:`ForecastSpec`).

A forecasting network maps a batch of windows to raw distribution parameters and the affine
map of its per-window normalisation:

    raw, shift, scale = net(inputs)   # raw (B, horizon, K, P); shift, scale (B, 1, K)

so that a value z in the network's units is ``scale * z + shift`` in the units of
``inputs.y`` (the estimator's family applies that map to the parameters, losses.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_SCALE = 1e-4  # the smallest scale parameter an output family gives (softplus + this)


@dataclass
class ForecastInputs:
    """One batch of B windows; L = input_len, H = horizon, K targets per step.

    y: (B, L, K) the context, scaled per series, 0 where not observed.
    observed: (B, L, K) bool, True where y was observed.
    extra: (B, L, n_extra) covariates at the context steps (past-only, future-known and
        calendar features).
    future: (B, H, n_future) future-known covariates at the horizon steps.
    series: (B,) long, each window's series (for the series embedding).
    static: (B, n_static) static features of each window's series.
    mask: (B, L) bool, False before a series' first row (padding), or None (no padding).
    """

    y: torch.Tensor
    observed: torch.Tensor
    extra: torch.Tensor
    future: torch.Tensor
    series: torch.Tensor
    static: torch.Tensor
    mask: torch.Tensor | None = None


@dataclass
class ForecastSpec:
    """Sizes and options of a forecasting network.

    n_targets: K, values forecast per step (the channels of an array; 1 for a DataFrame).
    n_params: raw numbers per value (the family's parameter count).
    observed_channel: add a 0/1 "observed" input per target (the DataFrame path, where
        values may be missing).
    channel_independent: each of the K targets is its own sequence through shared weights
        (PatchTST's setup); otherwise the K targets are one multivariate sequence.
    revin / subtract_last: the per-window normalisation (models.forecast.revin).
    patch_len, patch_stride: > 0 feed patches of patch_len steps, patch_stride apart, as
        tokens; 0 feeds every step.
    linear_skip: add a linear map of the normalised context to the raw parameter
        ``raw_location`` (a location in the window's units) of every horizon step.
    """

    input_len: int
    horizon: int
    n_targets: int
    n_params: int
    n_extra: int = 0
    n_future: int = 0
    observed_channel: bool = False
    n_series: int = 0
    series_embedding_dim: int = 0
    n_static: int = 0
    channel_independent: bool = False
    revin: bool = False
    subtract_last: bool = False
    patch_len: int = 0
    patch_stride: int = 0
    linear_skip: bool = False
    raw_location: int = 0
