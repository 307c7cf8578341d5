"""Dynamic evaluation (Krause, Kahembwe, Murray & Renals 2018, "Dynamic Evaluation of
Neural Sequence Models"): a language model keeps learning while it reads the text it is
scored on, so a passage, a name or a style seen earlier in the text gets cheaper later.

The validation stream is cut into ``rows`` consecutive parts read side by side (the
AWD-LSTM batching); each part is read in consecutive windows of ``window`` tokens with the
recurrent state carried (detached) from one window to the next. Every window is first
scored with the current weights, and only then are the weights adapted on it, by the
paper's SGD rule plus the decay toward the trained weights of its "global prior" rule:

    theta <- theta - lr * grad(mean loss of the window)
    theta <- theta + decay * (theta_trained - theta)

(the paper's RMS variant also divides the gradient by gradient statistics gathered on the
training set; this is its plain SGD form, which needs no pass over training data). The
static loss is the same windows with the same state carrying and no adaptation, so the two
numbers differ only by the adaptation. The model's weights are put back afterwards; nothing
is written anywhere.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError, ConfigError
from statewise.ops.tree import tree_map

# Defaults chosen on this machine (docs/training.md, "Regularisation and evaluation for
# recurrent language models"): the paper tunes lr and decay per model on validation data.
WINDOW = 32
ROWS = 8
LR = 0.05
DECAY = 0.002


def validation_stream(task: Any) -> torch.Tensor:
    """The task's validation tokens as one 1-D stream (``val_stream()`` or ``val_data``);
    ConfigError for tasks that have no running text (the synthetic tasks)."""
    if callable(getattr(task, "val_stream", None)):
        stream = task.val_stream()
    else:
        stream = getattr(task, "val_data", None)
    if not isinstance(stream, torch.Tensor) or stream.dim() != 1:
        raise ConfigError(
            f"dynamic evaluation reads the validation text as one stream; task "
            f"{type(task).__name__} has none (it needs a language-modelling task such as char_lm)"
        )
    return stream.long()


def _score_windows(
    model: nn.Module,
    data: torch.Tensor,
    window: int,
    adapt: tuple[float, float, list[torch.Tensor]] | None,
) -> float:
    """Mean loss (nats per token) over ``data`` (rows, L) read in windows with the state
    carried; with ``adapt = (lr, decay, trained)`` each window is scored, then learnt."""
    params = [p for p in model.parameters() if p.requires_grad]
    state, total, count = None, 0.0, 0
    for start in range(0, data.shape[1] - 1, window):
        chunk = data[:, start : start + window + 1]
        inputs, targets = chunk[:, :-1], chunk[:, 1:]
        with torch.set_grad_enabled(adapt is not None):
            logits, state = model(inputs, state=state, return_state=True)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        total += loss.item() * targets.numel()
        count += targets.numel()
        state = tree_map(torch.Tensor.detach, state)
        if adapt is not None:
            lr, decay, trained = adapt
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():
                for p, g, p0 in zip(params, grads, trained, strict=True):
                    if g is not None:
                        p.sub_(g, alpha=lr)
                    p.add_(p0 - p, alpha=decay)
    return total / max(count, 1)


def dynamic_evaluate(
    model: nn.Module,
    stream: torch.Tensor,
    window: int = WINDOW,
    rows: int = ROWS,
    lr: float = LR,
    decay: float = DECAY,
    max_tokens: int | None = None,
) -> dict[str, float | int]:
    """Static and dynamic loss of language model ``model`` on ``stream`` (1-D token ids).

    The first ``max_tokens`` tokens (all when None) are cut into ``rows`` equal consecutive
    parts (the remainder is dropped); see the module docstring. Returns static_loss,
    dynamic_loss (nats per token), their bits-per-token equivalents and the token count.
    The model runs in eval mode (no dropout), and its weights and mode are restored.
    """
    for name, value in (("window", window), ("rows", rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ArgumentError(f"{name} must be a positive int, got {value!r}")
    if not (math.isfinite(lr) and lr >= 0) or not 0 <= decay <= 1:
        raise ArgumentError(f"need lr >= 0 and decay in [0, 1], got lr={lr}, decay={decay}")
    if max_tokens is not None:
        stream = stream[:max_tokens]
    length = len(stream) // rows
    if length < 2:
        raise ArgumentError(
            f"the validation stream has {len(stream)} tokens, too few for {rows} rows of at least 2"
        )
    data = stream[: rows * length].view(rows, length)
    params = [p for p in model.parameters() if p.requires_grad]
    trained = [p.detach().clone() for p in params]
    was_training = model.training
    model.eval()
    try:
        static = _score_windows(model, data, window, None)
        dynamic = _score_windows(model, data, window, (lr, decay, trained))
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, trained, strict=True):
                p.copy_(p0)
        model.train(was_training)
    return {
        "static_loss": static,
        "dynamic_loss": dynamic,
        "static_bits_per_token": static / math.log(2),
        "dynamic_bits_per_token": dynamic / math.log(2),
        "tokens": data[:, 1:].numel(),
    }
