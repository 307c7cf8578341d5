"""Helpers for recurrent states: a state is a tensor, or a tuple/list/dict of tensors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

State = Any  # torch.Tensor | tuple[State, ...] | list[State] | dict[str, State]


def tree_map(fn: Callable[..., torch.Tensor], state: State, *others: State) -> State:
    """Apply ``fn`` leaf by leaf to ``state`` (and to structurally equal ``others``)."""
    if isinstance(state, torch.Tensor):
        return fn(state, *others)
    if isinstance(state, dict):
        return {k: tree_map(fn, v, *(o[k] for o in others)) for k, v in state.items()}
    if isinstance(state, (tuple, list)):
        return type(state)(tree_map(fn, *leaves) for leaves in zip(state, *others))
    raise TypeError(f"a state leaf must be a tensor, got {type(state).__name__}")


def tree_leaves(state: State) -> list[torch.Tensor]:
    """The tensors of a state, in a fixed order."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [leaf for k in state for leaf in tree_leaves(state[k])]
    if isinstance(state, (tuple, list)):
        return [leaf for item in state for leaf in tree_leaves(item)]
    raise TypeError(f"a state leaf must be a tensor, got {type(state).__name__}")


def tree_unflatten(template: State, leaves: list[torch.Tensor]) -> State:
    """Inverse of :func:`tree_leaves`: rebuild ``template``'s structure from ``leaves``."""
    it = iter(leaves)
    out = tree_map(lambda _: next(it), template)
    if next(it, None) is not None:
        raise ValueError("more leaves than the template holds")
    return out


def carry(keep_new: torch.Tensor, new: State, old: State) -> State:
    """Per batch row, take ``new`` where ``keep_new`` (B,) is True, else keep ``old``.

    This is how a masked (padding) step leaves the state unchanged.
    """

    def pick(n: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        m = keep_new.reshape(keep_new.shape + (1,) * (n.dim() - 1))
        return torch.where(m, n, o)

    return tree_map(pick, new, old)
