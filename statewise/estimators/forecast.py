"""Forecaster: fit / predict / evaluate / save / load for users who do not build models.

    from statewise import Forecaster
    f = Forecaster(input_len=96, horizon=24).fit(train, val, budget_s=120)
    future = f.predict(train[-96:])          # (24,) in the units of ``train``

Under the hood: a ``ForecastHead`` (models.heads) over a stack of recurrent blocks, trained
with AdamW + warm-up/cosine (train.optim) on windows cut from the series, which is
standardised with the training part's mean/std. The default layer is "lru": a diagonal
linear recurrence with a stable, near-1 eigenvalue initialisation, the closest registered
relative of S4 (the published ETTh1 reference), and fast on CPU through the shared scan.

With ``subtract_last=True`` (default) each context window is shifted by its last value
before the model and the forecast shifted back (the "NLinear" trick of Zeng et al. 2023),
which makes the model robust to the level shift between ETT's train and test years.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from statewise.errors import ArgumentError, CheckpointError
from statewise.estimators.fit import (
    NotFittedError,
    atomic_save,
    check_array,
    check_finite,
    check_limits,
    load_saved_weights,
    read_saved,
    total_steps,
    train_loop,
    unchanged_if_diverged,
)
from statewise.models.config import ModelConfig
from statewise.models.heads import ForecastHead
from statewise.tasks.forecast import mae, mse, train_statistics, windows

__all__ = ["Forecaster", "NotFittedError"]

_FILES = ("forecaster.json", "model.safetensors")


class Forecaster:
    """Forecast the next ``horizon`` values of a series from its last ``input_len`` values."""

    def __init__(
        self,
        layer: str = "lru",
        input_len: int = 96,
        horizon: int = 24,
        *,
        d_model: int = 64,
        n_layers: int = 2,
        batch_size: int = 32,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        subtract_last: bool = True,
        seed: int = 0,
        **model_kwargs: Any,
    ) -> None:
        for name, value in (("input_len", input_len), ("horizon", horizon)):
            if not isinstance(value, int) or value <= 0:
                raise ArgumentError(f"{name} must be a positive int, got {value!r}")
        self.options = dict(
            layer=layer,
            input_len=input_len,
            horizon=horizon,
            d_model=d_model,
            n_layers=n_layers,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            subtract_last=subtract_last,
            seed=seed,
            model_kwargs=model_kwargs,
        )
        self.input_len, self.horizon = input_len, horizon
        self.model: ForecastHead | None = None
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.history: list[dict[str, float]] = []

    # ---- training ------------------------------------------------------------------------

    @unchanged_if_diverged
    def fit(
        self,
        train: Any,
        val: Any = None,
        *,
        epochs: int | None = None,
        max_steps: int | None = None,
        budget_s: float | None = None,
        progress: bool = True,
    ) -> Forecaster:
        """Train on ``train`` (N,) or (N, C); stop at the first of epochs / max_steps / budget_s
        (epochs=10 if none is given). With ``val``, keep the weights of the best validation
        MSE, measured after every epoch and at the end."""
        check_limits(epochs, max_steps, budget_s)
        series = _as_series(train, "train", self.input_len + self.horizon)
        self.mean, self.std = (t.float() for t in train_statistics(series.double()))
        x, y = windows(self._normalise(series), self.input_len, self.horizon)
        val_series = None
        if val is not None:
            val_series = _as_series(val, "val", self.input_len + self.horizon)
            if val_series.shape[1] != series.shape[1]:
                raise ArgumentError(
                    f"val has {val_series.shape[1]} channels, train has {series.shape[1]}"
                )
        torch.manual_seed(self.options["seed"])
        self.model = self._build(series.shape[1])
        steps_per_epoch = math.ceil(x.shape[0] / self.options["batch_size"])
        total = total_steps(steps_per_epoch, epochs, max_steps, budget_s)
        opts = self.options

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.mse_loss(self._forward(x[idx]), y[idx])

        def validate() -> tuple[str, float]:
            return "val_mse", self.evaluate(val_series)["mse"]

        train_loop(
            self.model,
            loss_fn,
            x.shape[0],
            batch_size=opts["batch_size"],
            lr=opts["lr"],
            weight_decay=opts["weight_decay"],
            seed=opts["seed"],
            total=total,
            budget_s=budget_s,
            progress=progress,
            history=self.history,
            validate=None if val_series is None else validate,
        )
        return self

    # ---- inference -----------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, context: Any) -> Any:
        """Forecast from ``context`` of shape (input_len,), (input_len, C), (N, input_len) or
        (N, input_len, C) -> (horizon,), (horizon, C), (N, horizon), (N, horizon, C), as a
        numpy array or torch tensor like ``context``, in the original units.

        For a univariate model a 2-d context is (input_len, 1) if it has that shape, and
        (N, input_len) otherwise."""
        self._require_fit("predict")
        x, restore = self._as_batch(context)
        self.model.eval()
        out = self._forward(self._normalise(x)) * self.std + self.mean
        return restore(out)

    @torch.no_grad()
    def evaluate(self, series: Any) -> dict[str, float]:
        """MSE and MAE (normalised with the training statistics) over all windows of ``series``
        (N,) or (N, C); the first input_len rows are context only."""
        self._require_fit("evaluate")
        data = _as_series(series, "series", self.input_len + self.horizon)
        self._check_channels(data.shape[1], "series")
        x, y = windows(self._normalise(data), self.input_len, self.horizon)
        self.model.eval()
        pred = torch.cat([self._forward(b) for b in x.split(256)])
        return {"mse": mse(pred, y), "mae": mae(pred, y)}

    # ---- persistence ---------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write forecaster.json + model.safetensors into directory ``path`` atomically (a
        temporary sibling directory renamed into place)."""
        self._require_fit("save")
        meta = {
            "options": self.options,
            "n_channels": int(self.mean.shape[0]),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }

        def write(tmp: Path) -> list[str]:
            (tmp / _FILES[0]).write_text(json.dumps(meta, indent=1), encoding="utf-8")
            safetensors.torch.save_model(self.model, str(tmp / _FILES[1]))
            return _FILES

        atomic_save(path, write, "Forecaster", _FILES)

    @classmethod
    def load(cls, path: str | Path) -> Forecaster:
        meta = read_saved(path, "Forecaster", _FILES)
        try:
            options = dict(meta["options"])
            model_kwargs = options.pop("model_kwargs")
            self = cls(**options, **model_kwargs)
            self.mean = torch.tensor(meta["mean"], dtype=torch.float32)
            self.std = torch.tensor(meta["std"], dtype=torch.float32)
            self.model = self._build(meta["n_channels"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(
                f"{path}: forecaster.json does not describe a model: {err}"
            ) from None
        load_saved_weights(self.model, path)
        self.model.eval()
        return self

    # ---- helpers -------------------------------------------------------------------------

    def _build(self, n_channels: int) -> ForecastHead:
        opts = self.options
        config = ModelConfig(
            layer=opts["layer"],
            d_model=opts["d_model"],
            n_layers=opts["n_layers"],
            head="forecaster",
            input_dim=n_channels,
            horizon=self.horizon,
            vocab_size=0,
            **opts["model_kwargs"],
        )
        return ForecastHead(config)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.options["subtract_last"]:
            return self.model(x)
        last = x[:, -1:]
        return self.model(x - last) + last

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def _require_fit(self, what: str) -> None:
        if self.model is None:
            raise NotFittedError(f"call fit before {what}: this Forecaster has not been trained")

    def _check_channels(self, c: int, name: str) -> None:
        if c != self.mean.shape[0]:
            raise ArgumentError(
                f"{name} has {c} channels, the model was fitted on {self.mean.shape[0]}"
            )

    def _as_batch(self, context: Any):
        """context -> (N, input_len, C) float32 and a function mapping (N, horizon, C) back."""
        is_numpy = check_array(context, "context")
        x = torch.as_tensor(np.asarray(context) if is_numpy else context).detach()
        x_dtype = x.dtype
        x = x.float().cpu()
        check_finite(x, "context")
        L, C = self.input_len, int(self.mean.shape[0])
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

        def restore(out: torch.Tensor):
            for dim in sorted(squeeze, reverse=True):
                out = out.squeeze(dim)
            if is_numpy:
                return out.numpy().astype(np.result_type(np.asarray(context).dtype, np.float32))
            return out.to(x_dtype if x_dtype.is_floating_point else torch.float32)

        return x, restore


def _as_series(value: Any, name: str, min_rows: int) -> torch.Tensor:
    """(N,) or (N, C) numpy/torch -> float32 tensor (N, C), checked."""
    is_numpy = check_array(value, name)
    x = torch.as_tensor(np.asarray(value) if is_numpy else value).detach().float().cpu()
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
