"""Validation loss and the task's headline metric."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from statewise.tasks.base import IGNORE, Task


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) over the positions whose target is not IGNORE."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, batch_size: int, n_batches: int) -> dict[str, float]:
    """val_loss (nats per target token), val_accuracy, and bits_per_char for text."""
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    try:
        for inputs, targets in task.eval_batches(batch_size, n_batches):
            logits = model(inputs)
            real = targets != IGNORE
            n = int(real.sum())
            total_loss += token_loss(logits, targets).item() * n
            correct += int((logits.argmax(-1) == targets)[real].sum())
            count += n
    finally:
        model.train(was_training)
    loss = total_loss / max(count, 1)
    out = {"val_loss": loss, "val_accuracy": correct / max(count, 1)}
    if task.metric == "bits_per_char":
        out["val_bits_per_char"] = loss / math.log(2)
    return out
