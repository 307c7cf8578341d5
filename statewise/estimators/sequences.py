"""Ragged sequence inputs of the estimators: lists of (T_i, F) arrays or padded (N, T, F)
arrays with lengths, read into one padded tensor with lengths, and the per-channel
standardisation statistics of their real positions."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from statewise.errors import ArgumentError, ArgumentTypeError
from statewise.estimators.fit import as_tensor, check_finite


def _row_lengths(lengths: Any, n: int, seq_len: int) -> torch.Tensor:
    """lengths (N,) ints in [1, T] as int64; all T when None."""
    if lengths is None:
        return torch.full((n,), seq_len, dtype=torch.long)
    t, _ = as_tensor(lengths, "lengths")
    if t.is_floating_point() or tuple(t.shape) != (n,):
        raise ArgumentError(
            f"lengths must be an integer array of shape ({n},), got {t.dtype} {tuple(t.shape)}"
        )
    if int(t.min()) < 1 or int(t.max()) > seq_len:
        raise ArgumentError(f"lengths must lie in [1, {seq_len}]")
    return t.long()


def item_tensor(value: Any, name: str) -> torch.Tensor:
    """One sequence (a list, numpy array or tensor) as a CPU tensor."""
    if not isinstance(value, np.ndarray | torch.Tensor):
        try:
            value = np.asarray(value)
        except ValueError as err:
            raise ArgumentError(f"{name} is not a rectangular array: {err}") from None
    t, _ = as_tensor(value, name)
    return t


def pad_sequences(
    x: Any, lengths: Any, name: str, item_dims: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A list of sequences (each an array whose first axis is time, ``item_dims`` axes in
    all), or a padded array (N, T, ...) with optional ``lengths`` -> (a new padded tensor
    (N, T_max, ...), zero past each row's length, int64 if every sequence holds integers,
    else float64; lengths (N,)). Whatever a padded array holds past the lengths is dropped
    (out-of-range ids and NaN included)."""
    if isinstance(x, np.ndarray | torch.Tensor):
        t, _ = as_tensor(x, name)
        if t.dim() != item_dims + 1:
            raise ArgumentError(
                f"{name} must be a list of sequences or a padded array with {item_dims + 1} "
                f"axes, got shape {tuple(t.shape)}"
            )
        if 0 in t.shape[:2]:
            raise ArgumentError(f"{name} is empty (shape {tuple(t.shape)})")
        dtype = torch.float64 if t.is_floating_point() else torch.long
        lengths = _row_lengths(lengths, t.shape[0], t.shape[1])
        real = real_positions(lengths, t.shape[1]).view(*t.shape[:2], *[1] * (t.dim() - 2))
        return torch.where(real, t.to(dtype), 0), lengths
    if lengths is not None:
        raise ArgumentError(
            f"lengths is for a padded array {name}; a list of sequences gives its own lengths"
        )
    if not isinstance(x, list | tuple):
        raise ArgumentTypeError(
            f"{name} must be a list of sequences or a padded array, got {type(x).__name__}"
        )
    if not x:
        raise ArgumentError(f"{name} is empty")
    items = [item_tensor(v, f"{name}[{i}]") for i, v in enumerate(x)]
    for i, t in enumerate(items):
        if t.dim() != item_dims or t.shape[0] == 0 or t.shape[1:] != items[0].shape[1:]:
            want = "(T,)" if item_dims == 1 else f"(T, {', '.join(map(str, items[0].shape[1:]))})"
            raise ArgumentError(
                f"{name}[{i}] must have shape {want} with T >= 1, got {tuple(t.shape)}"
            )
    floating = any(t.is_floating_point() for t in items)
    dtype = torch.float64 if floating else torch.long
    lengths_out = torch.tensor([t.shape[0] for t in items])
    out = torch.zeros((len(items), int(lengths_out.max()), *items[0].shape[1:]), dtype=dtype)
    for i, t in enumerate(items):
        out[i, : t.shape[0]] = t
    return out, lengths_out


def real_positions(lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(N, T) bool: True at each row's first ``lengths`` positions."""
    return torch.arange(seq_len) < lengths[:, None]


def channel_statistics(x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-channel mean and standard deviation (float32) of x (N, T, C) over real frames."""
    values = x.double()[real_positions(lengths, x.shape[1])]
    return values.mean(0).float(), values.std(0, correction=0).clamp_min(1e-8).float()


def features(x: Any, lengths: Any, name: str, input_dim: int | None) -> tuple[torch.Tensor, ...]:
    """Feature sequences -> (float32 (N, T, C), lengths); C must equal ``input_dim`` if given."""
    values, lengths = pad_sequences(x, lengths, name, 2)
    if input_dim is not None and values.shape[2] != input_dim:
        raise ArgumentError(
            f"{name} must have {input_dim} features per frame, got {values.shape[2]}"
        )
    values = values.float()
    check_finite(values[real_positions(lengths, values.shape[1])], name)
    return values, lengths
