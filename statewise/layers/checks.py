"""Validation of layer constructor arguments (each returns the value or raises naming it),
and the optimizer tag for parameters that must not be weight-decayed."""

from __future__ import annotations

import math

import torch

from statewise.errors import ArgumentError, ArgumentTypeError


def positive_int(name: str, value: object) -> int:
    """``value`` if it is a positive int, else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ArgumentError(f"{name} must be a positive int, got {value!r}")
    return value


def positive_number(name: str, value: object) -> float:
    """``value`` as a float if it is a positive finite number, else ArgumentError naming
    ``name`` (NaN fails no ``<=`` test, hence the explicit check)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ArgumentError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def flag(name: str, value: object) -> bool:
    """``value`` if it is a bool, else TypeError naming ``name``."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be a bool, got {value!r}")
    return value


def no_weight_decay(*params: torch.nn.Parameter) -> None:
    """Tag parameters the optimizer must not decay (``statewise.train.optim`` reads the
    tag; weight decay otherwise applies to every parameter of rank >= 2): the dynamics of a
    recurrence (log decay rates, step sizes) and biases stored as matrices, as in the
    reference implementations (Mamba's ``_no_weight_decay``, RWKV-LM's time_* groups)."""
    for p in params:
        p._optim = {"weight_decay": 0.0}
