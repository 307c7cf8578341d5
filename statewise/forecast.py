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

import copy
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from tqdm.auto import tqdm

from statewise.models.config import ModelConfig
from statewise.models.heads import ForecastHead
from statewise.tasks.forecast import mae, mse, train_statistics, windows
from statewise.train.config import TrainConfig
from statewise.train.optim import lr_at, make_optimizer


class NotFittedError(ValueError):
    """predict / evaluate / save called before fit."""


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
                raise ValueError(f"{name} must be a positive int, got {value!r}")
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
        for name, value in (("epochs", epochs), ("max_steps", max_steps), ("budget_s", budget_s)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        series = _as_series(train, "train", self.input_len + self.horizon)
        self.mean, self.std = (t.float() for t in train_statistics(series.double()))
        x, y = windows(self._normalise(series), self.input_len, self.horizon)
        val_series = None
        if val is not None:
            val_series = _as_series(val, "val", self.input_len + self.horizon)
            if val_series.shape[1] != series.shape[1]:
                raise ValueError(
                    f"val has {val_series.shape[1]} channels, train has {series.shape[1]}"
                )
        torch.manual_seed(self.options["seed"])
        self.model = self._build(series.shape[1])
        steps_per_epoch = math.ceil(x.shape[0] / self.options["batch_size"])
        if epochs is None and max_steps is None and budget_s is None:
            epochs = 10
        limits = [max_steps, None if epochs is None else epochs * steps_per_epoch]
        total = min((s for s in limits if s is not None), default=None)
        self._train_loop(x, y, val_series, total, budget_s, steps_per_epoch, progress)
        return self

    def _train_loop(self, x, y, val_series, total, budget_s, steps_per_epoch, progress) -> None:
        opts = self.options
        # budget only: warm up over 20 steps, then plan the cosine from the measured speed
        planned = total if total is not None else 10**9
        config = TrainConfig(
            steps=planned,
            lr=opts["lr"],
            weight_decay=opts["weight_decay"],
            warmup_steps=min(100, max(1, planned // 20)) if total is not None else 20,
        )
        optimizer = make_optimizer(self.model, config)
        generator = torch.Generator().manual_seed(opts["seed"])
        best, best_state = math.inf, None
        start, step = time.perf_counter(), 0
        bar = tqdm(total=total, disable=not progress, desc="fit", unit="step")
        self.model.train()
        while True:
            for idx in torch.randperm(x.shape[0], generator=generator).split(opts["batch_size"]):
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, config)
                loss = torch.nn.functional.mse_loss(self._forward(x[idx]), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
                optimizer.step()
                step += 1
                elapsed = time.perf_counter() - start
                self.history.append({"step": step, "loss": loss.item(), "time_s": elapsed})
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if budget_s is not None and total is None and step == 20:
                    planned = max(21, int(budget_s / (elapsed / step)))
                    config = TrainConfig(**{**config.__dict__, "steps": planned})
                done = (total is not None and step >= total) or (
                    budget_s is not None and elapsed >= budget_s
                )
                if done or step % steps_per_epoch == 0:
                    break
            if val_series is not None:
                score = self.evaluate(val_series)["mse"]
                self.history[-1]["val_mse"] = score
                self.model.train()
                if score < best:
                    best, best_state = score, copy.deepcopy(self.model.state_dict())
            if done:
                break
        bar.close()
        if best_state is not None:
            self.model.load_state_dict(best_state)
        self.model.eval()

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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent))
        meta = {
            "options": self.options,
            "n_channels": int(self.mean.shape[0]),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }
        (tmp / "forecaster.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        safetensors.torch.save_model(self.model, str(tmp / "model.safetensors"))
        for name in ("forecaster.json", "model.safetensors"):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        old = path.with_name(path.name + ".old")
        if old.exists():  # left by an earlier save that was killed mid-swap
            shutil.rmtree(old)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        if old.exists():
            shutil.rmtree(old)

    @classmethod
    def load(cls, path: str | Path) -> Forecaster:
        path = Path(path)
        if not (path / "forecaster.json").is_file() or not (path / "model.safetensors").is_file():
            raise ValueError(f"path {str(path)!r} is not a saved Forecaster directory")
        meta = json.loads((path / "forecaster.json").read_text(encoding="utf-8"))
        options = dict(meta["options"])
        model_kwargs = options.pop("model_kwargs")
        self = cls(**options, **model_kwargs)
        self.mean = torch.tensor(meta["mean"], dtype=torch.float32)
        self.std = torch.tensor(meta["std"], dtype=torch.float32)
        self.model = self._build(meta["n_channels"])
        safetensors.torch.load_model(self.model, str(path / "model.safetensors"))
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
            raise ValueError(
                f"{name} has {c} channels, the model was fitted on {self.mean.shape[0]}"
            )

    def _as_batch(self, context: Any):
        """context -> (N, input_len, C) float32 and a function mapping (N, horizon, C) back."""
        is_numpy = _check_array(context, "context")
        x = torch.as_tensor(np.asarray(context) if is_numpy else context).detach()
        x_dtype = x.dtype
        x = x.float().cpu()
        _check_finite(x, "context")
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
            raise ValueError(f"context must have shape {expected}, got {shape}")

        def restore(out: torch.Tensor):
            for dim in sorted(squeeze, reverse=True):
                out = out.squeeze(dim)
            if is_numpy:
                return out.numpy().astype(np.result_type(np.asarray(context).dtype, np.float32))
            return out.to(x_dtype if x_dtype.is_floating_point else torch.float32)

        return x, restore


def _check_array(value: Any, name: str) -> bool:
    """True for numpy, False for torch; TypeError otherwise."""
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.number):
            raise TypeError(f"{name} must hold numbers, got dtype {value.dtype}")
        return True
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be a real-valued tensor, got dtype {value.dtype}")
        return False
    raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(value).__name__}")


def _check_finite(x: torch.Tensor, name: str) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def _as_series(value: Any, name: str, min_rows: int) -> torch.Tensor:
    """(N,) or (N, C) numpy/torch -> float32 tensor (N, C), checked."""
    is_numpy = _check_array(value, name)
    x = torch.as_tensor(np.asarray(value) if is_numpy else value).detach().float().cpu()
    if x.dim() == 1:
        x = x[:, None]
    if x.dim() != 2 or x.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N,) or (N, C), got {tuple(x.shape)}")
    _check_finite(x, name)
    if x.shape[0] < min_rows:
        raise ValueError(
            f"{name} has {x.shape[0]} rows, fewer than input_len + horizon = {min_rows}"
        )
    return x
