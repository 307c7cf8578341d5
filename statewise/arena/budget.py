"""Parameter matching: the d_model that brings a model closest to a parameter budget, and
the size of the state the model carries per sequence."""

from __future__ import annotations

import inspect
import math
from dataclasses import replace

import torch
from torch import nn

from statewise.errors import ArgumentError
from statewise.models import ModelConfig, build_model

MAX_D_MODEL = 4096


def count_params(model: nn.Module) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


def width_step(config: ModelConfig) -> int:
    """d_model is a multiple of 8 and of the layer's n_heads (its argument or default)."""
    heads = config.kwargs_for(config.layer).get("n_heads")
    if heads is None:
        from statewise.layers import info

        default = inspect.signature(info(config.layer).cls.__init__).parameters.get("n_heads")
        heads = default.default if default is not None else None
    return math.lcm(8, heads) if isinstance(heads, int) and heads > 0 else 8


def _params_at(config: ModelConfig, d_model: int) -> int | None:
    """Parameters of ``config`` at ``d_model``; None when the layer rejects that width.
    Built on the meta device (shapes without data, so no initialisation cost) when the
    layer's constructor allows it."""
    config = replace(config, d_model=d_model)
    try:
        try:
            with torch.device("meta"):
                return count_params(build_model(config))
        except (RuntimeError, NotImplementedError):  # a constructor that reads values
            return count_params(build_model(config))
    except ValueError:
        return None


def match_d_model(config: ModelConfig, budget: int) -> tuple[int, int]:
    """(d_model, parameters): the multiple of ``width_step`` whose model has the parameter
    count closest to ``budget`` (ties go to the smaller width). The count grows with
    d_model, so doubling and then bisecting over the multiples finds the crossing."""
    if budget <= 0:
        raise ArgumentError(f"the parameter budget must be positive, got {budget}")
    step = width_step(config)
    limit = MAX_D_MODEL // step
    lo, hi = 1, 1  # in units of step
    while hi < limit and (_params_at(config, hi * step) or 0) < budget:
        lo, hi = hi + 1, min(2 * hi, limit)
    while lo < hi:  # the smallest multiple whose model reaches the budget
        mid = (lo + hi) // 2
        count = _params_at(config, mid * step)
        if count is not None and count >= budget:
            hi = mid
        else:
            lo = mid + 1
    best: tuple[int, int] | None = None
    for k in (lo - 2, lo - 1, lo, lo + 1):
        count = _params_at(config, k * step) if k >= 1 else None
        if count is not None and (best is None or abs(count - budget) < abs(best[1] - budget)):
            best = (k * step, count)
    if best is None:
        raise ArgumentError(f"layer {config.layer!r}: no d_model near the budget {budget} builds")
    return best


def state_floats(model: nn.Module) -> int:
    """Numbers in the model's recurrent state for one sequence (all blocks; a complex
    number counts as two, integer counters not at all)."""
    total = 0

    def walk(node: object) -> None:
        nonlocal total
        if isinstance(node, torch.Tensor):
            if node.is_complex():
                total += 2 * node.numel()
            elif node.is_floating_point():
                total += node.numel()
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(model.init_state(1))
    return total


def model_state_floats(config: ModelConfig, seq_len: int) -> int:
    """The state of ``config``'s model; attention's state is its key-value cache at the
    task's length ``seq_len`` (not its default capacity), which grows with the length."""
    kwargs = config.kwargs_for(config.layer)
    if config.layer == "attention" and not kwargs.get("window"):
        own = {**config.layer_kwargs.get("attention", {}), "max_len": seq_len}
        config = replace(config, layer_kwargs={**config.layer_kwargs, "attention": own})
    return state_floats(build_model(config))
