"""Validation loss and the task's headline metric."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError, NonFiniteError
from statewise.tasks.base import IGNORE, Task, unpack_batch


def token_loss(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy (nats) over the positions whose target is not IGNORE; with
    ``label_smoothing`` = e the target puts 1 - e on the token and e / V on every one of
    the V tokens (so loss = (1 - e) CE + e * mean over tokens of -log p)."""
    return F.cross_entropy(
        logits.flatten(0, 1),
        targets.flatten(),
        ignore_index=IGNORE,
        label_smoothing=label_smoothing,
    )


@torch.no_grad()
def _score(model: nn.Module, batches: Iterable) -> tuple[float, float]:
    """(mean loss in nats, accuracy) over the target tokens of ``batches``, in eval mode."""
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    try:
        for batch in batches:
            inputs, targets, resets = unpack_batch(batch)
            logits = model(inputs, resets=resets)
            real = targets != IGNORE
            n = int(real.sum())
            total_loss += token_loss(logits, targets).item() * n
            correct += int((logits.argmax(-1) == targets)[real].sum())
            count += n
    finally:
        model.train(was_training)
    return total_loss / max(count, 1), correct / max(count, 1)


def evaluate(model: nn.Module, task: Task, batch_size: int, n_batches: int) -> dict[str, float]:
    """val_loss (nats per target token), val_accuracy; for byte-level text
    val_bits_per_char, for subword text val_bits_per_byte (the loss per token over the
    validation documents' UTF-8 bytes per token: comparable with a byte-level model's
    bits per character on the same documents)."""
    loss, accuracy = _score(model, task.eval_batches(batch_size, n_batches))
    out = {"val_loss": loss, "val_accuracy": accuracy}
    if task.metric == "bits_per_char":
        out["val_bits_per_char"] = loss / math.log(2)
    elif hasattr(task, "val_bytes_per_token"):
        out["val_bits_per_byte"] = loss / task.val_bytes_per_token() / math.log(2)
    return out


def at_lengths(score: Callable[[int], float], lengths: Iterable[int]) -> dict[int, float | None]:
    """``score(length)`` at each length, None where the model's activations overflowed.

    A model trained on short sequences can overflow on longer ones (a state that grows
    with the length); the layers refuse such an output (NonFiniteError). The model gives
    no answer at that length, which is a result, not an error of the input."""
    out: dict[int, float | None] = {}
    for length in lengths:
        try:
            out[length] = score(length)
        except NonFiniteError:
            out[length] = None
    return out


def mean_over_lengths(by_length: dict[int, float | None], no_answer: float = 0.0) -> float:
    """The mean of a metric over the test lengths; a length without an answer (None: the
    activations overflowed) counts as ``no_answer``, the metric of an empty answer (0 for
    an accuracy, 1 for a character error rate)."""
    values = [no_answer if v is None else v for v in by_length.values()]
    return sum(values) / len(values)


def evaluate_lengths(
    model: nn.Module, task: Task, lengths: Iterable[int], batch_size: int, n_batches: int
) -> dict[int, float | None]:
    """Accuracy on the task's test split at each of ``lengths`` (length generalisation);
    None at a length where the model's activations overflowed (:func:`at_lengths`).

    Only tasks with a ``test_batches(batch_size, n_batches, length)`` split have one (the
    synthetic tasks); anything else is a ValueError.
    """
    lengths = list(lengths)
    if lengths and not hasattr(task, "test_batches"):
        raise ArgumentError(f"task {type(task).__name__} has no test split at other lengths")
    return at_lengths(
        lambda length: _score(model, task.test_batches(batch_size, n_batches, length))[1],
        lengths,
    )
