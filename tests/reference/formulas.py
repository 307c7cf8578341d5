"""Elementary formulas the references share, written out rather than taken from torch.nn."""

from __future__ import annotations

import math

import torch


def sigmoid(v: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + torch.exp(-v))


def activation(name: str, v: torch.Tensor) -> torch.Tensor:
    """silu/swish or the exact (erf) gelu."""
    if name in ("silu", "swish"):
        return v * sigmoid(v)
    if name == "gelu":
        return 0.5 * v * (1.0 + torch.erf(v / math.sqrt(2.0)))
    raise NotImplementedError(f"the reference has no activation {name!r}")


def linear(layer: torch.nn.Linear, v: torch.Tensor) -> torch.Tensor:
    """v W^T (+ b) for v (..., in)."""
    out = v @ layer.weight.T
    return out if layer.bias is None else out + layer.bias
