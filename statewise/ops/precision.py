"""Recurrences in float32 under mixed precision.

Under ``torch.autocast(dtype=torch.bfloat16)`` the projections around a recurrence run as
bfloat16 GEMMs (that is where the speed-up is: 300-400 GFLOP/s against 90-150 in float32
on this CPU), but a recurrence accumulates over thousands of steps, and bfloat16's 8-bit
mantissa would lose the state: a decay of 0.999 is 1.0 in bfloat16. So every op that runs
a recurrence is wrapped by :func:`float32_recurrence`: under autocast its floating inputs
are cast to float32 and it runs with autocast off (numba's kernels, which know no
bfloat16, see float32 too). Outside autocast it is a plain call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])
LOW_PRECISION = (torch.bfloat16, torch.float16)


def autocast_active(device_type: str = "cpu") -> bool:
    """Whether autocast is on for ``device_type`` here."""
    return torch.is_autocast_enabled(device_type)


def to_float32(value: Any) -> Any:
    """``value`` with bfloat16/float16 tensors (also inside tuples, lists, dicts) as float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in LOW_PRECISION else value
    if isinstance(value, dict):
        return {k: to_float32(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple
        return type(value)(*(to_float32(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(to_float32(v) for v in value)
    return value


def float32_recurrence(fn: F) -> F:
    """Run ``fn`` in float32 with autocast off when autocast is on (see the module doc)."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        devices = [t.device.type for t in args if isinstance(t, torch.Tensor)][:1] or ["cpu"]
        if not autocast_active(devices[0]):
            return fn(*args, **kwargs)
        with torch.autocast(devices[0], enabled=False):
            return fn(*to_float32(args), **to_float32(kwargs))

    return wrapped  # type: ignore[return-value]
