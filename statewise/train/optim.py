"""AdamW with decoupled weight decay on matrices only, the warm-up + cosine schedule,
gradient clipping and the divergence check every training loop runs before its step."""

from __future__ import annotations

import math

import torch
from torch import nn

from statewise.errors import TrainingDiverged
from statewise.train.config import TrainConfig


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """Weight decay on weights of rank >= 2; none on biases, norms, decays and gates, nor on
    parameters a layer tags ``p._optim = {"weight_decay": 0.0}`` (e.g. S4D's dynamics)."""
    params = [p for p in model.parameters() if p.requires_grad]

    def decays(p: torch.nn.Parameter) -> bool:
        return p.dim() >= 2 and getattr(p, "_optim", {}).get("weight_decay", 1.0) != 0.0

    decay = [p for p in params if decays(p)]
    no_decay = [p for p in params if not decays(p)]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
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
