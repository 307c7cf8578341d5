"""Helpers shared by the high-level estimators (``Forecaster``, ``SequenceClassifier``).

Array checks and conversion, the stopping rule (epochs / max_steps / budget_s), the
AdamW + warm-up/cosine training loop with best-on-validation restore, and atomic saving of
a directory.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from statewise.errors import InputError
from statewise.train.config import TrainConfig
from statewise.train.optim import lr_at, make_optimizer


class NotFittedError(InputError, ValueError):
    """predict / evaluate / save called before fit."""


def check_array(value: Any, name: str) -> bool:
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


def as_tensor(value: Any, name: str) -> tuple[torch.Tensor, bool]:
    """numpy/torch -> (a detached CPU tensor of the same dtype, whether it was numpy)."""
    is_numpy = check_array(value, name)
    return torch.as_tensor(np.asarray(value) if is_numpy else value).detach().cpu(), is_numpy


def check_finite(x: torch.Tensor, name: str) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def check_limits(epochs: Any, max_steps: Any, budget_s: Any) -> None:
    for name, value in (("epochs", epochs), ("max_steps", max_steps), ("budget_s", budget_s)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")


def total_steps(
    steps_per_epoch: int, epochs: int | None, max_steps: int | None, budget_s: float | None
) -> int | None:
    """The step count to stop at (None: stop on budget_s only); epochs=10 if nothing given."""
    if epochs is None and max_steps is None and budget_s is None:
        epochs = 10
    limits = [max_steps, None if epochs is None else epochs * steps_per_epoch]
    return min((s for s in limits if s is not None), default=None)


def train_loop(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    *,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    total: int | None,
    budget_s: float | None,
    progress: bool,
    history: list[dict[str, float]],
    validate: Callable[[], tuple[str, float]] | None = None,
) -> None:
    """Minimise ``loss_fn(indices)`` over shuffled minibatches of ``n`` examples until
    ``total`` steps or ``budget_s`` seconds. After every epoch and at the end, ``validate()``
    -> (name, score, lower is better) is logged and the best weights are restored at the end."""
    steps_per_epoch = math.ceil(n / batch_size)
    # budget only: warm up over 20 steps, then plan the cosine from the measured speed
    planned = total if total is not None else 10**9
    config = TrainConfig(
        steps=planned,
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=min(100, max(1, planned // 20)) if total is not None else 20,
    )
    optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(seed)
    best, best_state = math.inf, None
    start, step, done = time.perf_counter(), 0, False
    bar = tqdm(total=total, disable=not progress, desc="fit", unit="step")
    model.train()
    while True:
        for idx in torch.randperm(n, generator=generator).split(batch_size):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config)
            loss = loss_fn(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            step += 1
            elapsed = time.perf_counter() - start
            history.append({"step": step, "loss": loss.item(), "time_s": elapsed})
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
        if validate is not None:
            name, score = validate()
            history[-1][name] = score
            model.train()
            if score < best:
                best, best_state = score, copy.deepcopy(model.state_dict())
        if done:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()


def atomic_save(path: str | Path, write: Callable[[Path], Iterable[str]]) -> None:
    """Fill directory ``path`` atomically: ``write(tmp)`` writes files into a temporary
    sibling directory and returns their names, which are fsynced before the directory is
    renamed into place (an older ``path`` is moved aside and removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent))
    try:
        for name in write(tmp):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(path.name + ".old")
    if old.exists():  # left by an earlier save that was killed mid-swap
        shutil.rmtree(old)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)
