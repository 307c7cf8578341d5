"""What the estimators share: training their model with the shared loop from their options,
and save / load: options (the constructor's arguments), what fit learned, and a model
rebuilt from them, in a directory written atomically."""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from statewise.errors import CheckpointError
from statewise.estimators.fit import (
    NotFittedError,
    atomic_save,
    load_saved_weights,
    read_saved,
    total_steps,
    train_loop,
)


class SavedEstimator(ABC):
    """save / load / the fitted check of an estimator held as ``options`` (its constructor's
    arguments, ``model_kwargs`` among them), what fit learned (:meth:`_fitted`,
    :meth:`_restore`) and a model (:meth:`_build`)."""

    kind = ""
    files: tuple[str, ...] = ("", "model.safetensors")  # a third: tensors fit learned
    options: dict[str, Any]
    model: nn.Module | None

    history: list[dict[str, float]]

    def _train(
        self,
        loss_fn: Callable[[torch.Tensor], torch.Tensor],
        n: int,
        *,
        epochs: int | None,
        max_steps: int | None,
        budget_s: float | None,
        progress: bool,
        validate: Callable[[], tuple[str, float]] | None,
    ) -> None:
        """Train ``self.model`` on ``loss_fn(indices)`` over ``n`` examples with the shared
        loop, batch size, learning rate, weight decay and seed from ``self.options``."""
        opts = self.options
        train_loop(
            self.model,
            loss_fn,
            n,
            batch_size=opts["batch_size"],
            lr=opts["lr"],
            weight_decay=opts["weight_decay"],
            seed=opts["seed"],
            total=total_steps(math.ceil(n / opts["batch_size"]), epochs, max_steps, budget_s),
            budget_s=budget_s,
            progress=progress,
            history=self.history,
            validate=validate,
        )

    def save(self, path: str | Path) -> None:
        """Write the metadata (JSON), model.safetensors and, for an estimator with a third
        file, the tensors of :meth:`_fitted_tensors` into directory ``path`` atomically."""
        self._require_fit("save")
        meta = {"options": self.options, **self._fitted()}
        tensors = self._fitted_tensors() if len(self.files) == 3 else None

        def write(tmp: Path) -> tuple[str, ...]:
            (tmp / self.files[0]).write_text(json.dumps(meta, indent=1), encoding="utf-8")
            safetensors.torch.save_model(self.model, str(tmp / self.files[1]))
            if tensors is not None:
                contiguous = {k: v.contiguous() for k, v in tensors.items()}
                safetensors.torch.save_file(contiguous, str(tmp / self.files[2]))
            return self.files

        atomic_save(path, write, self.kind, self.files)

    @classmethod
    def load(cls, path: str | Path) -> Any:
        """The estimator saved in ``path`` (CheckpointError if it is not one)."""
        meta = read_saved(path, cls.kind, cls.files)
        tensors = None
        if len(cls.files) == 3:
            try:
                tensors = safetensors.torch.load_file(str(Path(path) / cls.files[2]))
            except (OSError, safetensors.SafetensorError) as err:
                raise CheckpointError(f"{path}: {cls.files[2]} cannot be loaded: {err}") from None
        try:
            options = dict(meta["options"])
            model_kwargs = options.pop("model_kwargs")
            self = cls(**options, **model_kwargs)
            self._restore(meta)
            if tensors is not None:
                self._restore_tensors(meta, tensors)
            self.model = self._build()
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise CheckpointError(
                f"{path}: {cls.files[0]} does not describe a model: {err}"
            ) from None
        load_saved_weights(self.model, path)
        self.model.eval()
        return self

    def _require_fit(self, what: str) -> None:
        if self.model is None:
            raise NotFittedError(f"call fit before {what}: this {self.kind} is not trained")

    @abstractmethod
    def _fitted(self) -> dict[str, Any]:
        """What fit learned besides the weights, as JSON values."""

    @abstractmethod
    def _restore(self, meta: dict[str, Any]) -> None:
        """Set what :meth:`_fitted` saved."""

    def _fitted_tensors(self) -> dict[str, torch.Tensor]:
        """What fit learned as tensors, saved in ``files[2]`` (estimators with three files)."""
        raise NotImplementedError(f"{self.kind} saves no tensors")

    def _restore_tensors(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Set what :meth:`_fitted_tensors` saved."""
        raise NotImplementedError(f"{self.kind} saves no tensors")

    @abstractmethod
    def _build(self) -> nn.Module:
        """A fresh model for the options and what fit learned."""


def optional_tensor(values: list[float] | None) -> torch.Tensor | None:
    return None if values is None else torch.tensor(values, dtype=torch.float32)


def optional_list(t: torch.Tensor | None) -> list[float] | None:
    return None if t is None else t.tolist()
