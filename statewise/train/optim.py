"""The optimiser of every training loop (the trainer, ``fit()``, the arena): AdamW with
decoupled weight decay on matrices, or plain SGD for NT-ASGD; per-parameter settings from
a tag layers put on their parameters; the warm-up + cosine schedule applied to each
parameter group from its own base; gradient clipping and the divergence check every loop
runs before its step.

The tag is a dict on the parameter, ``p._optim``, with any of these keys:

- ``"weight_decay": 0.0``: never decay this parameter (the dynamics of a recurrence,
  biases stored as matrices). Weight decay otherwise applies to every parameter of rank >= 2.
- ``"lr_scale": s``: this parameter's learning rate is s times train.lr.
- ``"lr_max": m``: and at most m (S4D's A and dt: ``min(lr, 1e-3)``, the S4 code base's
  ``lr=min(0.001, args.lr)``).

Each distinct (weight decay, lr_scale, lr_max) becomes one param group whose
``base_lr = min(train.lr * lr_scale, lr_max)``; the schedule multiplies every group's
base by the same factor, ``lr_at(step) / train.lr`` (as the S4 and RWKV-LM code bases
scale their groups' own learning rates), through :func:`set_lr`, which every loop calls.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from statewise.errors import TrainingDiverged
from statewise.train.config import TrainConfig

TAG_KEYS = ("weight_decay", "lr_scale", "lr_max")


def _tag(name: str, p: nn.Parameter) -> tuple[bool, float, float]:
    """(weight decay off, lr_scale, lr_max) of parameter ``name`` from its ``_optim`` tag;
    ValueError naming the parameter for a tag this module cannot honour."""
    tag = getattr(p, "_optim", None) or {}
    if not isinstance(tag, dict) or set(tag) - set(TAG_KEYS):
        raise ValueError(
            f"parameter {name}: _optim must be a dict with keys among {TAG_KEYS}, got {tag!r}"
        )
    no_decay = "weight_decay" in tag
    if no_decay and tag["weight_decay"] != 0.0:
        raise ValueError(f"parameter {name}: _optim weight_decay can only be 0.0 (no decay)")
    scale, cap = float(tag.get("lr_scale", 1.0)), float(tag.get("lr_max", math.inf))
    if not (math.isfinite(scale) and scale > 0) or not cap > 0:
        raise ValueError(f"parameter {name}: _optim lr_scale and lr_max must be positive")
    return no_decay, scale, cap


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """The param groups of ``model``'s trainable parameters, one per distinct setting.

    The first two are always the untagged ones (weight decay on matrices, none on the rest;
    either may be empty), so checkpoints of models without tags keep their group layout;
    tagged settings follow in the order their first parameter appears. Each group holds
    ``weight_decay``, ``lr_scale``, ``lr_max``, ``base_lr`` and ``lr`` (= base_lr).
    """
    groups: dict[tuple[bool, float, float], dict[str, Any]] = {}

    def group(decays: bool, scale: float, cap: float) -> dict[str, Any]:
        key = (decays, scale, cap)
        if key not in groups:
            base = min(config.lr * scale, cap)
            groups[key] = {
                "params": [],
                "weight_decay": config.weight_decay if decays else 0.0,
                "lr_scale": scale,
                "lr_max": cap,
                "base_lr": base,
                "lr": base,
            }
        return groups[key]

    group(True, 1.0, math.inf)
    group(False, 1.0, math.inf)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay, scale, cap = _tag(name, p)
        group(p.dim() >= 2 and not no_decay, scale, cap)["params"].append(p)
    return list(groups.values())


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser of train.optimizer over :func:`param_groups`: AdamW (betas from the
    config; weight decay decoupled, Loshchilov & Hutter 2019) or, for "nt_asgd", plain SGD
    (no momentum; weight decay as an L2 term, as AWD-LSTM's SGD) whose weights
    :class:`NTASGD` averages once triggered."""
    groups = param_groups(model, config)
    if config.optimizer == "nt_asgd":
        return torch.optim.SGD(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas))


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up over warmup_steps, then cosine decay from lr to min_lr_ratio * lr.

    lr(s) = lr * (s + 1) / warmup                                  for s < warmup
    lr(s) = lr * (r + (1 - r) * (1 + cos(pi * p)) / 2),  p = (s - warmup) / (steps - warmup)
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    r = config.min_lr_ratio
    return config.lr * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, step: int, config: TrainConfig) -> float:
    """Set every group's lr for ``step``: ``lr_at(step) * base_lr / train.lr`` (a group at
    base_lr = train.lr gets lr_at(step) exactly); returns lr_at(step), the logged lr.
    Groups without a ``base_lr`` (an optimiser built elsewhere) get lr_at(step)."""
    lr = lr_at(step, config)
    for group in optimizer.param_groups:
        base = group.get("base_lr", config.lr)
        group["lr"] = lr if base == config.lr else lr * (base / config.lr)
    return lr


def clip_gradients(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """Scale the gradients to norm ``max_norm`` at most (0: leave them); their norm before."""
    return torch.nn.utils.clip_grad_norm_(
        model.parameters(), max_norm if max_norm > 0 else math.inf
    )


def check_finite_step(step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
    """TrainingDiverged naming ``step`` if the loss or the gradient norm is not finite
    (checked before the optimizer step, so the weights stay those of the step before)."""
    for what, value in (("the loss", loss), ("the gradient norm", grad_norm)):
        if not math.isfinite(value.item()):
            raise TrainingDiverged(step, what, value.item())


def diverged_forward(step: int, model: torch.nn.Module) -> TrainingDiverged:
    """The error for a forward pass at ``step`` that met NaN or inf (NonFiniteError) on
    valid training data: the update before it overflowed a weight, or weights so large
    that an activation overflowed, which the layers reject before any loss exists."""
    for p in model.parameters():
        bad = p.detach()[~torch.isfinite(p.detach())]
        if bad.numel():
            return TrainingDiverged(step, "a weight", bad[0].item())
    return TrainingDiverged(step, "an activation", "not finite (the weights overflowed it)")


class NTASGD:
    """The averaging half of NT-ASGD (Merity, Keskar & Socher 2017, "Regularizing and
    Optimizing LSTM Language Models", Algorithm 1), over the SGD steps of the training loop.

    At each evaluation the loop calls :meth:`observe` with the validation loss. Until the
    trigger, the losses are logged; the trigger fires at the first evaluation whose loss is
    worse than the best of the evaluations more than ``nonmono`` back, that is when
    ``len(logged) > nonmono and loss > min(logged[:-nonmono])`` (AWD-LSTM's test, with
    its default nonmono = 5). From then on the weights are averaged: the mean of the
    weights at the trigger and after every later optimiser step (:meth:`after_step`), a
    running mean in the parameters' dtype. :meth:`averaged` swaps the mean into the model
    (for evaluation and checkpoints, as AWD-LSTM evaluates and saves the averaged weights)
    and back. :meth:`state_dict` holds what a checkpoint needs besides the averaged weights
    it saves: the raw current weights and the counts, so a resumed run continues exactly.
    """

    def __init__(self, model: nn.Module, nonmono: int) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.nonmono = nonmono
        self.logged: list[float] = []
        self.trigger_step: int | None = None
        self.count = 0
        self.mean: list[torch.Tensor] = []

    @property
    def triggered(self) -> bool:
        return self.trigger_step is not None

    def observe(self, val_loss: float, step: int) -> bool:
        """Log one evaluation's validation loss at ``step``; True if averaging starts now."""
        fire = (
            not self.triggered
            and len(self.logged) > self.nonmono
            and val_loss > min(self.logged[: -self.nonmono])
        )
        self.logged.append(float(val_loss))
        if fire:
            self.trigger_step, self.count = step, 1
            self.mean = [p.detach().clone() for p in self.params]
        return fire

    @torch.no_grad()
    def after_step(self) -> None:
        """Fold the weights after an optimiser step into the mean (once triggered)."""
        if not self.triggered:
            return
        self.count += 1
        for m, p in zip(self.mean, self.params, strict=True):
            m.add_(p.detach() - m, alpha=1.0 / self.count)

    @contextmanager
    def averaged(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block (unchanged before the
        trigger); the raw weights are put back after it."""
        if not self.triggered:
            yield
            return
        raw = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, m in zip(self.params, self.mean, strict=True):
                p.copy_(m)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(self.params, raw, strict=True):
                    p.copy_(r)

    def state_dict(self) -> dict[str, Any]:
        """Plain data for train_state.pt (weights_only): the log, the trigger, the count
        and, once triggered, the raw weights (the averaged ones are the checkpoint's)."""
        return {
            "nonmono": self.nonmono,
            "logged": list(self.logged),
            "trigger_step": -1 if self.trigger_step is None else self.trigger_step,
            "count": self.count,
            "raw": [p.detach().clone() for p in self.params] if self.triggered else [],
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` after the model was loaded from the checkpoint: the
        loaded (averaged) weights become the mean and the raw weights go back in."""
        self.logged = [float(v) for v in state["logged"]]
        step = int(state["trigger_step"])
        self.trigger_step = None if step < 0 else step
        self.count = int(state["count"])
        self.mean = []
        if self.triggered:
            raw = state["raw"]
            if len(raw) != len(self.params):
                raise ValueError(f"{len(raw)} raw weights for {len(self.params)} parameters")
            self.mean = [p.detach().clone() for p in self.params]
            for p, r in zip(self.params, raw, strict=True):
                p.copy_(r)
