"""Helpers shared by the high-level estimators (``Forecaster``, ``SequenceClassifier``).

Array checks and conversion, the stopping rule (epochs / max_steps / budget_s), the
AdamW + warm-up/cosine training loop with best-on-validation restore, and atomic saving of
a directory.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from tqdm.auto import tqdm

from statewise.errors import (
    ArgumentError,
    ArgumentTypeError,
    CheckpointError,
    DataError,
    InputError,
    NonFiniteError,
    finite_number,
)
from statewise.train.config import TrainConfig
from statewise.train.optim import (
    check_finite_step,
    clip_gradients,
    diverged_forward,
    make_optimizer,
    set_lr,
)

DECODE_BATCH = 256  # rows per forward when an estimator predicts: bounds the memory


class NotFittedError(InputError, ValueError):
    """predict / evaluate / save called before fit."""


def check_array(value: Any, name: str) -> bool:
    """True for numpy, False for torch; TypeError otherwise."""
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.number):
            raise ArgumentTypeError(f"{name} must hold numbers, got dtype {value.dtype}")
        return True
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise ArgumentTypeError(f"{name} must be a real-valued tensor, got dtype {value.dtype}")
        return False
    raise ArgumentTypeError(
        f"{name} must be a numpy array or torch tensor, got {type(value).__name__}"
    )


def as_tensor(value: Any, name: str) -> tuple[torch.Tensor, bool]:
    """numpy/torch -> (a detached CPU tensor of the same dtype, whether it was numpy). A
    read-only array (e.g. pandas' ``to_numpy()`` under copy-on-write) is copied, since torch
    cannot share memory it may not write; the others are shared, never written."""
    is_numpy = check_array(value, name)
    if is_numpy and not value.flags.writeable:
        value = value.copy()
    return torch.as_tensor(value).detach().cpu(), is_numpy


def check_finite(x: torch.Tensor, name: str) -> None:
    if not torch.isfinite(x).all():
        raise DataError(f"{name} contains NaN or infinite values")


def check_limits(epochs: Any, max_steps: Any, budget_s: Any) -> None:
    for name, value in (("epochs", epochs), ("max_steps", max_steps), ("budget_s", budget_s)):
        if value is not None and not (finite_number(name, value) > 0):
            raise ArgumentError(f"{name} must be positive, got {value!r}")


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
    -> (name, score, lower is better) is logged and the best weights are restored at the end.
    A non-finite loss or gradient norm raises TrainingDiverged before that step is taken.
    ``history`` is emptied first, then gets one record per step: it describes this fit."""
    history.clear()
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
    try:
        while True:
            for idx in torch.randperm(n, generator=generator).split(batch_size):
                set_lr(optimizer, step, config)  # each group from its own base_lr
                try:
                    loss = loss_fn(idx)
                except NonFiniteError as err:
                    raise diverged_forward(step + 1, model) from err
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                check_finite_step(step + 1, loss, clip_gradients(model, config.grad_clip))
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
    finally:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()


def atomic_save(
    path: str | Path, write: Callable[[Path], Iterable[str]], kind: str, files: tuple[str, ...]
) -> None:
    """Fill directory ``path`` with a saved ``kind`` (exactly the files ``files``):
    ``write(tmp)`` writes them into a new hidden sibling directory, they are fsynced, and the
    directory is renamed into place. An existing ``path`` is replaced only if it holds
    exactly a saved ``kind``; anything else there is an error naming ``path``, raised
    before anything is written or moved."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        held = sorted(p.name for p in path.iterdir()) if path.is_dir() else None
        if path.is_symlink() or held != sorted(files):
            raise ArgumentError(
                f"{path} exists and is not a saved {kind} (it would be replaced); nothing "
                "was changed: choose a new path, or the directory of a saved " + kind
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        written = sorted(write(tmp))
        if written != sorted(files):
            raise RuntimeError(f"saving a {kind} wrote {written}, expected {sorted(files)}")
        for name in written:
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not path.exists():
        tmp.rename(path)
        return
    # the old save is moved onto an empty directory of our own, then removed
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".replaced", dir=path.parent))
    path.rename(aside)
    tmp.rename(path)
    shutil.rmtree(aside)


def read_saved(path: str | Path, kind: str, files: tuple[str, ...]) -> dict[str, Any]:
    """The JSON metadata (``files[0]``) of a saved ``kind`` in ``path``; CheckpointError
    when ``path`` is not one or the file cannot be read."""
    path = Path(path)
    if not all((path / name).is_file() for name in files):
        raise CheckpointError(f"path {str(path)!r} is not a saved {kind} directory")
    try:
        meta = json.loads((path / files[0]).read_text(encoding="utf-8"))
    except ValueError as err:
        raise CheckpointError(f"{path / files[0]} cannot be read: {err}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("options"), dict):
        raise CheckpointError(f"{path / files[0]} is not the metadata of a saved {kind}")
    return meta


def load_saved_weights(model: torch.nn.Module, path: str | Path) -> None:
    """model.safetensors of a saved estimator into ``model``; CheckpointError if it cannot
    be read or does not fit."""
    try:
        safetensors.torch.load_model(model, str(Path(path) / "model.safetensors"))
    except (RuntimeError, OSError, safetensors.SafetensorError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: model.safetensors cannot be loaded: {first}") from None


def unchanged_on_error(fit: Callable) -> Callable:
    """Decorator for an estimator's ``fit``: when it raises (bad input found part way, a
    diverged run), the estimator is put back as it was before the call (fitted or not, its
    options and history included), then the error propagates."""

    @functools.wraps(fit)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        saved = {
            **self.__dict__,
            "history": list(self.history),
            "options": copy.deepcopy(self.options),
        }
        try:
            return fit(self, *args, **kwargs)
        except Exception:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise

    return wrapper
