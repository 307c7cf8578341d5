"""Weight import: checkpoints of other libraries into statewise checkpoints.

A converter for a transformers ``model_type`` lives in ``hf_<family>.py`` and registers
itself with :func:`register_hf`; every module of this package is imported here.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from statewise.errors import InputError
from statewise.models import ModelConfig, build_model
from statewise.train import checkpoint
from statewise.train.config import RunConfig
from statewise.train.lock import writer_lock

HFConverter = Callable[
    [dict[str, Any], dict[str, torch.Tensor]], tuple[ModelConfig, dict[str, torch.Tensor]]
]
HF_CONVERTERS: dict[str, HFConverter] = {}


class ConversionError(InputError, ValueError):
    """An input that cannot be converted; the message says why."""


def register_hf(model_type: str) -> Callable[[HFConverter], HFConverter]:
    """Decorator: ``fn(config_json, tensors) -> (ModelConfig, state_dict)`` converts
    transformers checkpoints whose config.json has this ``model_type``."""

    def add(fn: HFConverter) -> HFConverter:
        HF_CONVERTERS[model_type] = fn
        return fn

    return add


def read_hf_dir(src: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """config.json and every tensor of the ``*.safetensors`` files (sharded or not)."""
    src = Path(src)
    if not src.is_dir():
        raise ConversionError(f"{src} is not a directory (expected a save_pretrained folder)")
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{src} has no config.json; is it a save_pretrained folder?")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ConversionError(f"{config_path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ConversionError(f"{config_path} holds a {type(config).__name__}, not an object")
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise ConversionError(
            f"{src} has no *.safetensors weights (save with safe_serialization=True)"
        )
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(safetensors.torch.load_file(str(f)))
        except (safetensors.SafetensorError, OSError, RuntimeError) as err:
            raise ConversionError(f"{f} cannot be read as safetensors: {err}") from None
    return config, tensors


def save_converted(
    out: str | Path, config: ModelConfig, model: torch.nn.Module, source: str
) -> None:
    """Write ``model`` as a statewise checkpoint at ``out``, which must not exist yet."""
    out = Path(out)
    with writer_lock(out, f"statewise convert --out {out}"):
        if out.exists():
            raise ConversionError(f"{out} already exists; choose another --out")
        run = RunConfig()
        run.model = config
        checkpoint.save(out, run, model, {"step": 0, "tokens": 0, "source": source}, [])


def convert_hf(src: str | Path, out: str | Path) -> ModelConfig:
    """Convert a transformers checkpoint folder into a statewise checkpoint at ``out``."""
    if Path(out).exists():
        raise ConversionError(f"{out} already exists; choose another --out")
    config_json, tensors = read_hf_dir(src)
    model_type = config_json.get("model_type")
    if model_type not in HF_CONVERTERS:
        raise ConversionError(
            f"model_type {model_type!r} is not supported; supported: "
            f"{', '.join(sorted(HF_CONVERTERS))}"
        )
    model_config, state_dict = HF_CONVERTERS[model_type](config_json, tensors)
    model = build_model(model_config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ConversionError(
            f"converting {model_type}: the weights do not fit the model "
            f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
        )
    save_converted(out, model_config, model, source=f"hf:{model_type}")
    return model_config


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
