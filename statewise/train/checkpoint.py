"""Checkpoint directories, written atomically.

A checkpoint is a directory holding
    config.toml        the RunConfig the model was built from
    model.safetensors  the weights
    train_state.pt     step, optimizer and RNG state (loads with torch.load(weights_only=True))
    metrics.jsonl      one JSON object per logged step

``save`` writes everything into ``DIR.tmp`` and then swaps it in (``DIR`` -> ``DIR.old``,
``DIR.tmp`` -> ``DIR``), so at every instant one complete checkpoint exists on disk; a
process killed in the middle of the swap is repaired by ``recover`` on the next open.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from statewise.errors import CheckpointError, ConfigError
from statewise.models import build_model
from statewise.train.config import RunConfig, load_config

FILES = ("config.toml", "model.safetensors", "train_state.pt", "metrics.jsonl")


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def recover(path: str | Path) -> Path:
    """Finish or undo a swap that a killed process left half done; returns ``path``."""
    path = Path(path)
    old, tmp = _sibling(path, ".old"), _sibling(path, ".tmp")
    if not path.exists() and old.is_dir():
        old.rename(path)
    for leftover in (old, tmp):
        if leftover.exists() and path.exists():
            shutil.rmtree(leftover)
    return path


def is_checkpoint(path: str | Path) -> bool:
    path = recover(path)
    return all((path / f).is_file() for f in FILES)


def save(
    path: str | Path,
    config: RunConfig,
    model: nn.Module,
    train_state: dict[str, Any],
    metrics: list[dict[str, Any]],
) -> None:
    path = recover(path)
    tmp, old = _sibling(path, ".tmp"), _sibling(path, ".old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / "config.toml").write_text(config.to_toml(), encoding="utf-8")
    safetensors.torch.save_model(
        model, str(tmp / "model.safetensors"), metadata={"step": str(train_state.get("step", 0))}
    )
    torch.save(train_state, tmp / "train_state.pt")
    with open(tmp / "metrics.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(m) + "\n" for m in metrics)
    for name in FILES:
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)


def _require(path: str | Path, files: tuple[str, ...]) -> Path:
    path = recover(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist")
    missing = [f for f in files if not (path / f).is_file()]
    if missing:
        raise CheckpointError(
            f"{str(path)!r} is not a complete statewise checkpoint: missing {', '.join(missing)}"
        )
    return path


def load_run_config(path: str | Path) -> RunConfig:
    path = _require(path, ("config.toml",))
    try:
        return load_config(path / "config.toml")
    except ConfigError as err:
        raise CheckpointError(f"{path}: its config.toml is not usable: {err}") from None


def load(path: str | Path) -> nn.Module:
    """The model stored in checkpoint directory ``path``, in eval mode."""
    path = _require(path, ("config.toml", "model.safetensors"))
    config = load_run_config(path)
    model = build_model(config.model)
    load_weights(model, path)
    return model.eval()


def load_weights(model: nn.Module, path: Path) -> None:
    try:
        missing, unexpected = safetensors.torch.load_model(
            model, str(path / "model.safetensors"), strict=False
        )
    except (RuntimeError, OSError, safetensors.SafetensorError) as err:
        raise CheckpointError(
            f"{path}: model.safetensors does not fit the model in config.toml "
            f"(a checkpoint of another layer type or size?): {str(err).splitlines()[0]}"
        ) from None
    if missing or unexpected:
        names = ", ".join(list(missing)[:3] + list(unexpected)[:3])
        raise CheckpointError(
            f"{path}: model.safetensors does not fit the model in config.toml "
            f"(a checkpoint of another layer type?); mismatched tensors: {names}"
        )


def load_train_state(path: str | Path) -> dict[str, Any]:
    path = _require(path, FILES)
    try:
        return torch.load(path / "train_state.pt", weights_only=True)
    except Exception as err:  # torch raises many kinds for a corrupt file
        raise CheckpointError(f"{path}: train_state.pt cannot be read: {err}") from None


def load_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = _require(path, ("metrics.jsonl",))
    lines = (path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]
