"""Building, training and running the Forecaster's networks over a :class:`Panel`.

Networks by ``layer``: any registered sequence mixer (a :class:`RecurrentForecaster` over a
block stack of it), "dlinear" (:class:`DLinear`), or the closed-form baselines
"seasonal_naive" and "ridge" (:mod:`statewise.models.forecast.baselines`, fitted without
gradients, Gaussian intervals from their training residuals).

Training minimises the family's loss (losses.py) over shuffled minibatches of windows
with the shared loop (:func:`statewise.estimators.fit.train_loop`); the loss of a batch
covers its observed targets only. The progress bar shows the loss and the throughput in
tokens/s, a token being one context time step of one sequence (B windows x input_len steps,
times K when each of the K channels is its own sequence).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from statewise.estimators.fit import total_steps, train_loop
from statewise.estimators.forecast.frame import interval_columns
from statewise.estimators.forecast.losses import Family, level_probabilities
from statewise.estimators.forecast.panel import Panel
from statewise.models.config import ModelConfig
from statewise.models.forecast.baselines import ClosedFormForecaster, RidgeOnLags, SeasonalNaive
from statewise.models.forecast.dlinear import DLinear
from statewise.models.forecast.inputs import ForecastInputs, ForecastSpec
from statewise.models.forecast.net import RecurrentForecaster

CLOSED_FORM = ("seasonal_naive", "ridge")
BUILT_IN = ("dlinear", *CLOSED_FORM)
_EVAL_BATCH = 1024

Windows = tuple[torch.Tensor, torch.Tensor]


def build_network(options: dict[str, Any], spec: ForecastSpec) -> nn.Module:
    layer = options["layer"]
    if layer == "dlinear":
        return DLinear(spec, options["moving_avg"])
    if layer == "seasonal_naive":
        return SeasonalNaive(spec, options["season_length"])
    if layer == "ridge":
        return RidgeOnLags(spec, options["ridge_lam"])
    return RecurrentForecaster(spec, model_config(options, spec.n_targets))


def model_config(options: dict[str, Any], n_targets: int) -> ModelConfig:
    """The ModelConfig of a registered layer's network (``model_kwargs`` are its fields)."""
    return ModelConfig(
        layer=options["layer"],
        d_model=options["d_model"],
        n_layers=options["n_layers"],
        head="forecaster",
        input_dim=n_targets,
        horizon=options["horizon"],
        vocab_size=0,
        **options["model_kwargs"],
    )


def distribution(net: nn.Module, family: Family, inputs: ForecastInputs) -> torch.Tensor:
    """Parameters (B, H, K, P) in the units of ``inputs.y`` (the series-scaled units)."""
    raw, shift, scale = net(inputs)
    return family.affine(family.constrain(raw), shift, scale)


def in_data_units(params: torch.Tensor, family: Family, panel: Panel, s: torch.Tensor):
    """Series-scaled parameters of windows of series ``s`` -> the data's units (float64)."""
    return family.affine(params.double(), panel.shift[s][:, None], panel.scale[s][:, None])


def forecast_columns(
    family: Family, name: str, params: torch.Tensor, levels: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Parameters (..., P) in the data's units -> columns of shape (...): the point forecast
    ``name`` and the interval bounds of ``levels`` (frame.interval_columns)."""
    columns = {name: family.mean(params)}
    if levels:
        quantiles = family.quantiles(params, level_probabilities(levels))
        for i, column in enumerate(interval_columns(name, list(levels))):
            columns[column] = quantiles[..., i]
    return columns


def window_loss(
    net: nn.Module, family: Family, panel: Panel, windows: Windows, horizon: int
) -> torch.Tensor:
    s, c = windows
    params = distribution(net, family, panel.inputs(s, c, horizon))
    target, observed = panel.targets(s, c, horizon)
    if family.trains_in_data_units:
        params = in_data_units(params, family, panel, s)
        target = target.double() * panel.scale[s][:, None] + panel.shift[s][:, None]
    return family.loss(params, target, observed)


@torch.no_grad()
def forecast(
    net: nn.Module, family: Family, panel: Panel, windows: Windows, horizon: int
) -> torch.Tensor:
    """Parameters (W, H, K, P) of the windows in the data's units (float64), in batches."""
    net.eval()
    s, c = windows
    out = [
        in_data_units(distribution(net, family, panel.inputs(sb, cb, horizon)), family, panel, sb)
        for sb, cb in zip(s.split(_EVAL_BATCH), c.split(_EVAL_BATCH))
    ]
    return torch.cat(out) if out else torch.zeros(0, horizon, panel.y.shape[2], family.n_params)


@torch.no_grad()
def mean_loss(net: nn.Module, family: Family, panel: Panel, windows: Windows, horizon: int):
    """The loss over ``windows``, weighted by their windows (validation)."""
    net.eval()
    total, count = 0.0, 0
    for sb, cb in zip(windows[0].split(_EVAL_BATCH), windows[1].split(_EVAL_BATCH)):
        total += float(window_loss(net, family, panel, (sb, cb), horizon)) * len(sb)
        count += len(sb)
    return total / max(count, 1)


def fit_network(
    net: nn.Module,
    family: Family,
    panel: Panel,
    windows: Windows,
    options: dict[str, Any],
    limits: dict[str, Any],
    history: list[dict[str, float]],
    validate: Callable[[], tuple[str, float]] | None,
    progress: bool,
) -> float:
    """Train ``net`` on ``windows``; returns the throughput in tokens/s."""
    spec: ForecastSpec = net.spec
    horizon, n = spec.horizon, len(windows[0])
    sequences = spec.n_targets if spec.channel_independent else 1
    if isinstance(net, ClosedFormForecaster):
        start = time.perf_counter()
        net.fit_windows(lambda: _batches(panel, windows, horizon))
        net.eval()
        return n * spec.input_len * sequences / max(time.perf_counter() - start, 1e-9)
    steps_per_epoch = math.ceil(n / options["batch_size"])
    total = total_steps(steps_per_epoch, limits["epochs"], limits["max_steps"], limits["budget_s"])
    meter = _Throughput(total, progress, spec.input_len * sequences)

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        loss = window_loss(net, family, panel, (windows[0][idx], windows[1][idx]), horizon)
        meter.step(len(idx), loss)
        return loss

    try:
        train_loop(
            net,
            loss_fn,
            n,
            batch_size=options["batch_size"],
            lr=options["lr"],
            weight_decay=options["weight_decay"],
            seed=options["seed"],
            total=total,
            budget_s=limits["budget_s"],
            progress=False,
            history=history,
            validate=validate,
        )
    finally:
        meter.close()
    return meter.tokens_per_s()


def _batches(
    panel: Panel, windows: Windows, horizon: int
) -> Iterator[tuple[ForecastInputs, torch.Tensor, torch.Tensor]]:
    for s, c in zip(windows[0].split(_EVAL_BATCH), windows[1].split(_EVAL_BATCH)):
        yield (panel.inputs(s, c, horizon), *panel.targets(s, c, horizon))


class _Throughput:
    """A tqdm bar of steps with the loss and tokens/s (train_loop's own bar is off)."""

    def __init__(self, total: int | None, enabled: bool, tokens_per_window: int) -> None:
        self.bar = tqdm(total=total, disable=not enabled, desc="fit", unit="step")
        self.tokens_per_window = tokens_per_window
        self.tokens = 0
        self.start = time.perf_counter()

    def step(self, windows: int, loss: torch.Tensor) -> None:
        self.tokens += windows * self.tokens_per_window
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss.item():.4f}", tok_s=f"{self.tokens_per_s():,.0f}")

    def tokens_per_s(self) -> float:
        return self.tokens / max(time.perf_counter() - self.start, 1e-9)

    def close(self) -> None:
        self.bar.close()
