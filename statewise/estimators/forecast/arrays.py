"""The array side of the Forecaster: one series (N,) or (N, C) as numpy or torch, checked and
turned into a panel of one series with C targets, and context windows into network inputs.

For a univariate model a 2-d context is (input_len, 1) if it has that shape, and
(N, input_len) otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from statewise.errors import ArgumentError
from statewise.estimators.fit import as_tensor, check_finite
from statewise.estimators.forecast.panel import Panel, make_panel
from statewise.models.forecast.inputs import ForecastInputs


def as_series(value: Any, name: str, min_rows: int) -> torch.Tensor:
    """(N,) or (N, C) numpy/torch -> float64 tensor (N, C), checked."""
    x = as_tensor(value, name)[0].double()
    if x.dim() == 1:
        x = x[:, None]
    if x.dim() != 2 or x.shape[1] == 0:
        raise ArgumentError(f"{name} must have shape (N,) or (N, C), got {tuple(x.shape)}")
    check_finite(x, name)
    if x.shape[0] < min_rows:
        raise ArgumentError(
            f"{name} has {x.shape[0]} rows, fewer than input_len + horizon = {min_rows}"
        )
    return x


def array_panel(series: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, input_len: int):
    """A panel holding ``series`` (N, C) as one series of C targets, no covariates."""
    n = series.shape[0]
    return make_panel(
        [series.numpy()],
        shift[None],
        scale[None],
        [np.zeros((n, 0))],
        [np.zeros((n, 0))],
        torch.zeros(1, 0),
        torch.zeros(1, dtype=torch.long),
        input_len,
    )


def full_context_windows(panel: Panel, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every window with a full context: cutoffs input_len .. N - horizon."""
    last = panel.lengths - horizon
    return panel.windows(torch.full_like(last, panel.input_len), last, horizon, need_target=False)


def context_inputs(x: torch.Tensor, horizon: int) -> ForecastInputs:
    """Scaled contexts (N, input_len, C), all observed -> network inputs without covariates."""
    n = x.shape[0]
    return ForecastInputs(
        y=x.float(),
        observed=torch.ones_like(x, dtype=torch.bool),
        extra=torch.zeros(n, x.shape[1], 0),
        future=torch.zeros(n, horizon, 0),
        series=torch.zeros(n, dtype=torch.long),
        static=torch.zeros(n, 0),
    )


def as_contexts(
    context: Any, input_len: int, n_channels: int
) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """context -> (N, input_len, C) float64 and a function mapping (N, horizon, C) back to
    the shape and type of ``context``."""
    x, is_numpy = as_tensor(context, "context")
    x_dtype = x.dtype
    x = x.double()
    check_finite(x, "context")
    L, C = input_len, n_channels
    shape = tuple(x.shape)
    if x.dim() == 1 and C == 1 and shape == (L,):
        x, squeeze = x[None, :, None], (0, 2)
    elif x.dim() == 2 and shape == (L, C):
        x, squeeze = x[None], (0,)
    elif x.dim() == 2 and C == 1 and shape[1] == L:
        x, squeeze = x[:, :, None], (2,)
    elif x.dim() == 3 and shape[1:] == (L, C):
        squeeze = ()
    else:
        expected = (
            f"({L},), (N, {L}), ({L}, 1) or (N, {L}, 1)"
            if C == 1
            else f"({L}, {C}) or (N, {L}, {C})"
        )
        raise ArgumentError(f"context must have shape {expected}, got {shape}")

    def restore(out: torch.Tensor) -> Any:
        for dim in sorted(squeeze, reverse=True):
            out = out.squeeze(dim)
        if is_numpy:
            return out.numpy().astype(np.result_type(np.asarray(context).dtype, np.float32))
        return out.to(x_dtype if x_dtype.is_floating_point else torch.float32)

    return x, restore
