"""SequenceClassifier: fit / predict / evaluate / save / load for users who do not build models.

    from statewise import SequenceClassifier
    clf = SequenceClassifier(layer="lru").fit(x_train, y_train, val=(x_val, y_val), epochs=5)
    labels = clf.predict(x_test)             # (N,) int64
    probs = clf.predict_proba(x_test)        # (N, n_classes)

``x`` is (N, T) integer token ids, or (N, T) / (N, T, C) real values; padded batches take
``lengths`` (N,) (right padding) or ``mask`` (N, T) bool (True = real token). Under the hood:
a ``ClassifierHead`` (models.heads) over a stack of recurrent blocks, reading the class from
the state after the last real token, trained with cross-entropy, AdamW and warm-up/cosine
(shared with ``Forecaster`` through statewise.estimators.fit). Real-valued inputs are
standardised per channel with the training set's mean/std over real positions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from statewise.errors import ArgumentError, ArgumentTypeError
from statewise.estimators.fit import (
    NotFittedError,
    as_tensor,
    check_finite,
    check_limits,
    unchanged_on_error,
)
from statewise.estimators.saved import SavedEstimator, optional_list, optional_tensor
from statewise.models.config import ModelConfig
from statewise.models.heads import ClassifierHead

__all__ = ["NotFittedError", "SequenceClassifier"]


class SequenceClassifier(SavedEstimator):
    """Classify whole sequences: token ids (N, T) or values (N, T) / (N, T, C) -> labels (N,).

    n_classes: inferred at fit as max(y) + 1 (at least 2) when None.
    vocab_size: token input with ids in [0, vocab_size). input_dim: real-valued input with
    that many channels. Give at most one; with neither, fit infers it from x's dtype (integer:
    tokens with vocab_size = max(x) + 1; floating: values with C channels).
    **model_kwargs: any other ``ModelConfig`` field (mlp_ratio, layer_kwargs, ...).
    """

    kind = "SequenceClassifier"
    files = ("classifier.json", "model.safetensors")

    def __init__(
        self,
        layer: str = "lru",
        n_classes: int | None = None,
        vocab_size: int | None = None,
        input_dim: int | None = None,
        *,
        d_model: int = 64,
        n_layers: int = 2,
        batch_size: int = 32,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        seed: int = 0,
        **model_kwargs: Any,
    ) -> None:
        for name, value, low in (
            ("n_classes", n_classes, 2),
            ("vocab_size", vocab_size, 1),
            ("input_dim", input_dim, 1),
            ("batch_size", batch_size, 1),
        ):
            if value is not None and (not isinstance(value, int) or value < low):
                raise ArgumentError(f"{name} must be an int >= {low}, got {value!r}")
        if vocab_size is not None and input_dim is not None:
            raise ArgumentError(
                "give vocab_size (token input) or input_dim (real values), not both"
            )
        for name in ("head", "horizon"):
            if name in model_kwargs:
                raise ArgumentError(f"{name} is fixed by SequenceClassifier, do not pass it")
        self.options = dict(
            layer=layer,
            n_classes=n_classes,
            vocab_size=vocab_size,
            input_dim=input_dim,
            d_model=d_model,
            n_layers=n_layers,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
            model_kwargs=model_kwargs,
        )
        self.n_classes, self.vocab_size, self.input_dim = n_classes, vocab_size, input_dim
        self.model: ClassifierHead | None = None
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.history: list[dict[str, float]] = []

    # ---- training ------------------------------------------------------------------------

    @unchanged_on_error
    def fit(
        self,
        x: Any,
        y: Any,
        val: tuple | None = None,
        *,
        lengths: Any = None,
        mask: Any = None,
        epochs: int | None = None,
        max_steps: int | None = None,
        budget_s: float | None = None,
        progress: bool = True,
    ) -> SequenceClassifier:
        """Train on sequences ``x`` with labels ``y`` (N,) ints; stop at the first of epochs /
        max_steps / budget_s (epochs=10 if none is given). ``val`` = (x, y) or (x, y, lengths):
        the weights of the best validation loss (after every epoch and at the end) are kept."""
        check_limits(epochs, max_steps, budget_s)
        self._infer_input(x)
        inputs, real = self._inputs(x, lengths, mask, "x")
        labels = self._labels(y, inputs.shape[0], "y", infer=self.n_classes is None)
        if self.n_classes is None:
            self.n_classes = max(2, int(labels.max()) + 1)
        if self.input_dim is not None:
            self._fit_statistics(inputs, real)
        val_data = None
        if val is not None:
            if not isinstance(val, tuple | list) or len(val) not in (2, 3):
                raise ArgumentError("val must be a tuple (x, y) or (x, y, lengths)")
            vx, vreal = self._inputs(val[0], val[2] if len(val) == 3 else None, None, "val x")
            val_data = (vx, vreal, self._labels(val[1], vx.shape[0], "val y"))
        torch.manual_seed(self.options["seed"])
        self.model = self._build()
        inputs = self._normalise(inputs)

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            batch_real = None if real is None else real[idx]
            return F.cross_entropy(self._logits(inputs[idx], batch_real), labels[idx])

        def validate() -> tuple[str, float]:
            scores = self._score(*val_data)
            self.history[-1]["val_accuracy"] = scores["accuracy"]
            return "val_loss", scores["loss"]

        self._train(
            loss_fn,
            len(labels),
            epochs=epochs,
            max_steps=max_steps,
            budget_s=budget_s,
            progress=progress,
            validate=None if val_data is None else validate,
        )
        return self

    # ---- inference -----------------------------------------------------------------------

    @torch.no_grad()
    def predict_proba(self, x: Any, *, lengths: Any = None, mask: Any = None) -> Any:
        """Class probabilities (N, n_classes): numpy float32 for numpy x, else a torch tensor."""
        self._require_fit("predict_proba")
        inputs, real = self._inputs(x, lengths, mask, "x")
        probs = self._all_logits(self._normalise(inputs), real).softmax(-1)
        return probs.numpy() if isinstance(x, np.ndarray) else probs

    @torch.no_grad()
    def predict(self, x: Any, *, lengths: Any = None, mask: Any = None) -> Any:
        """Labels (N,) int64: numpy for numpy x, else a torch tensor."""
        self._require_fit("predict")
        inputs, real = self._inputs(x, lengths, mask, "x")
        labels = self._all_logits(self._normalise(inputs), real).argmax(-1)
        return labels.numpy() if isinstance(x, np.ndarray) else labels

    @torch.no_grad()
    def evaluate(self, x: Any, y: Any, *, lengths: Any = None, mask: Any = None) -> dict:
        """{"accuracy", "loss"} (mean cross-entropy in nats) on ``x``, ``y``."""
        self._require_fit("evaluate")
        inputs, real = self._inputs(x, lengths, mask, "x")
        return self._score(inputs, real, self._labels(y, inputs.shape[0], "y"))

    # ---- persistence ---------------------------------------------------------------------

    def _fitted(self) -> dict[str, Any]:
        return {
            "n_classes": self.n_classes,
            "vocab_size": self.vocab_size,
            "input_dim": self.input_dim,
            "mean": optional_list(self.mean),
            "std": optional_list(self.std),
        }

    def _restore(self, meta: dict[str, Any]) -> None:
        self.n_classes, self.vocab_size = meta["n_classes"], meta["vocab_size"]
        self.input_dim = meta["input_dim"]
        self.mean, self.std = optional_tensor(meta["mean"]), optional_tensor(meta["std"])

    # ---- helpers -------------------------------------------------------------------------

    def _build(self) -> ClassifierHead:
        opts = self.options
        config = ModelConfig(
            layer=opts["layer"],
            d_model=opts["d_model"],
            n_layers=opts["n_layers"],
            head="classifier",
            n_classes=self.n_classes,
            vocab_size=self.vocab_size or 0,
            input_dim=self.input_dim or 1,
            **opts["model_kwargs"],
        )
        return ClassifierHead(config)

    def _infer_input(self, x: Any) -> None:
        if self.vocab_size is not None or self.input_dim is not None:
            return
        t, _ = as_tensor(x, "x")
        if t.is_floating_point():
            self.input_dim = int(t.shape[2]) if t.dim() == 3 else 1
        elif t.numel():
            self.vocab_size = int(t.max()) + 1

    def _inputs(self, x: Any, lengths: Any, mask: Any, name: str):
        """x -> (ids (N, T) int64 or values (N, T, C) float32, mask (N, T) bool or None)."""
        t, _ = as_tensor(x, name)
        if self.vocab_size is not None:
            if t.is_floating_point():
                raise ArgumentTypeError(f"{name} must hold integer token ids, got dtype {t.dtype}")
            if t.dim() != 2 or t.shape[1] == 0:
                raise ArgumentError(
                    f"{name} must have shape (N, T) of token ids, got {tuple(t.shape)}"
                )
            t = t.long()
            if t.numel() and (t.min() < 0 or t.max() >= self.vocab_size):
                raise ArgumentError(f"{name} token ids must lie in [0, {self.vocab_size})")
        else:
            if self.input_dim == 1 and t.dim() == 2:
                t = t[:, :, None]
            if t.dim() != 3 or t.shape[1] == 0 or t.shape[2] != self.input_dim:
                shapes = (
                    "(N, T) or (N, T, 1)" if self.input_dim == 1 else f"(N, T, {self.input_dim})"
                )
                raise ArgumentError(f"{name} must have shape {shapes}, got {tuple(t.shape)}")
            t = t.float()
            check_finite(t, name)
        if t.shape[0] == 0:
            raise ArgumentError(f"{name} is empty")
        return t, _real_mask(lengths, mask, t.shape[0], t.shape[1])

    def _labels(self, y: Any, n: int, name: str, infer: bool = False) -> torch.Tensor:
        t, _ = as_tensor(y, name)
        if t.is_floating_point():
            raise ArgumentTypeError(f"{name} must hold integer class labels, got dtype {t.dtype}")
        if t.dim() != 1 or t.shape[0] != n:
            raise ArgumentError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
        t = t.long()
        if t.min() < 0 or (not infer and t.max() >= self.n_classes):
            high = "" if infer else f", {self.n_classes}"
            raise ArgumentError(
                f"{name} labels must lie in [0{high})" if high else f"{name} labels must be >= 0"
            )
        return t

    def _fit_statistics(self, x: torch.Tensor, real: torch.Tensor | None) -> None:
        values = x.double().reshape(-1, x.shape[-1]) if real is None else x.double()[real]
        self.mean = values.mean(0).float()
        self.std = values.std(0, correction=0).clamp_min(1e-8).float()

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mean is None else (x - self.mean) / self.std

    def _logits(self, x: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
        if real is not None and bool(real.all()):
            real = None
        return self.model(x, real)

    def _all_logits(self, x: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
        self.model.eval()
        chunks = [
            self._logits(x[i : i + 256], None if real is None else real[i : i + 256])
            for i in range(0, x.shape[0], 256)
        ]
        return torch.cat(chunks)

    @torch.no_grad()
    def _score(self, x: torch.Tensor, real, labels: torch.Tensor) -> dict[str, float]:
        logits = self._all_logits(self._normalise(x), real)
        return {
            "accuracy": (logits.argmax(-1) == labels).double().mean().item(),
            "loss": F.cross_entropy(logits, labels).item(),
        }


def _real_mask(lengths: Any, mask: Any, n: int, T: int) -> torch.Tensor | None:
    """lengths (N,) (right padding) or mask (N, T) bool -> mask (N, T) bool, or None."""
    if lengths is not None and mask is not None:
        raise ArgumentError("give lengths or mask, not both")
    if mask is not None:
        m, _ = as_tensor(mask, "mask") if not _is_bool(mask) else (torch.as_tensor(mask), 0)
        if m.shape != (n, T):
            raise ArgumentError(f"mask must have shape ({n}, {T}), got {tuple(m.shape)}")
        m = m.bool().cpu()
        if not m.any(1).all():
            raise ArgumentError("mask has a row with no real token")
        return m
    if lengths is None:
        return None
    t, _ = as_tensor(lengths, "lengths")
    if t.is_floating_point() or t.shape != (n,):
        raise ArgumentError(
            f"lengths must be an integer array of shape ({n},), got {tuple(t.shape)}"
        )
    if t.min() < 1 or t.max() > T:
        raise ArgumentError(f"lengths must lie in [1, {T}]")
    return torch.arange(T)[None, :] < t.long()[:, None]


def _is_bool(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype == np.bool_
    return isinstance(value, torch.Tensor) and value.dtype == torch.bool
