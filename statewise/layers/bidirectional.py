"""A bidirectional encoder over any sequence mixer (Schuster & Paliwal 1997).

Two instances of one layer read the sequence in opposite orders:

    y_fwd = layer_fwd(x)                     (token t sees x_1 .. x_t)
    y_bwd = R(layer_bwd(R(x)))               (token t sees x_t .. x_n)
    y     = [y_fwd, y_bwd]  (merge="concat", width 2D)   or   y_fwd + y_bwd  (merge="sum", D)

where R reverses each row within its own real tokens: with a mask, the real positions
p_1 < ... < p_n of a row are swapped as p_i <-> p_{n+1-i} and padded positions stay where
they are, so the backward direction starts at each row's own last real token whatever the
padding (right, left or holes), and the mixers' masks carry their states through the padding
as they do for one direction. R is its own inverse. The final states are those of both
directions: the backward one after reading the row back to its first real token.

The layer: a registered name builds two independent instances,
``statewise.layers.get(name, d_model=..., **layer_kwargs)`` each with its own random
initialisation (as torch.nn.LSTM's two directions). A :class:`SequenceMixer` instance becomes
the forward direction and a deep copy of it the backward one: separate parameters that start
equal and part as training shows them the sequence in opposite orders (pass a name to start
them apart).

Not a causal mixer: each output depends on the whole row, so there is no ``step`` and no
``init_state``; asking for them raises an AttributeError that says so (``hasattr(module,
"step")`` is False), and the registry does not hold it, so a model config cannot name it
as a block's mixer. Use it as an encoder.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from statewise.errors import ArgumentError, ArgumentTypeError
from statewise.layers.base import SequenceMixer, _check_mask
from statewise.layers.registry import get
from statewise.ops.tree import State

MERGES = ("concat", "sum")
_CAUSAL_ONLY = ("step", "init_state")


def reversal_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) gather index of R: the real positions of each row in reverse order, padded
    positions mapped to themselves. Its own inverse."""
    batch, seq_len = mask.shape
    positions = torch.arange(seq_len, device=mask.device).expand(batch, seq_len)
    # the real positions in order, then the padded ones (a stable sort on "is padding")
    real_first = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices
    rank = mask.long().cumsum(1) - 1  # rank of each real token among its row's real tokens
    mirrored = (mask.sum(1, keepdim=True) - 1 - rank).clamp(min=0)
    return torch.where(mask, real_first.gather(1, mirrored), positions)


def _reverse(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    if index is None:
        return x.flip(1)
    return x.gather(1, index.unsqueeze(2).expand_as(x))


class Bidirectional(nn.Module):
    """forward(x (B, T, D), mask=None) -> (y (B, T, 2D) or (B, T, D), (state_fwd, state_bwd)).

    ``layer_or_name``: a registered layer name (``layer_kwargs`` go to
    ``statewise.layers.get``, ``d_model`` among them) or a SequenceMixer instance (no
    ``layer_kwargs``). ``merge``: "concat" (forward then backward features) or "sum".
    """

    causal = False

    def __init__(self, layer_or_name: str | SequenceMixer, merge: str = "concat", **layer_kwargs):
        super().__init__()
        if merge not in MERGES:
            raise ArgumentError(f"merge must be one of {MERGES}, got {merge!r}")
        if isinstance(layer_or_name, str):
            if "d_model" not in layer_kwargs:
                raise ArgumentError(f"d_model is needed to build layer {layer_or_name!r}")
            self.forward_layer = get(layer_or_name, **layer_kwargs)
            self.backward_layer = get(layer_or_name, **layer_kwargs)
        elif isinstance(layer_or_name, SequenceMixer):
            if layer_kwargs:
                raise ArgumentError(
                    f"layer_kwargs {sorted(layer_kwargs)} are only for a layer given by name"
                )
            self.forward_layer = layer_or_name
            self.backward_layer = copy.deepcopy(layer_or_name)
        else:
            raise ArgumentTypeError(
                "layer_or_name must be a registered layer name or a SequenceMixer (a causal "
                f"mixer on the layer contract), got {type(layer_or_name).__name__}"
            )
        self.merge = merge
        self.d_model = self.forward_layer.d_model
        self.d_out = 2 * self.d_model if merge == "concat" else self.d_model

    def extra_repr(self) -> str:
        return f"merge={self.merge!r}"

    def __getattr__(self, name: str):
        if name in _CAUSAL_ONLY:
            raise AttributeError(
                f"Bidirectional has no {name}: it is not a causal mixer (each output reads "
                "the whole sequence, so it cannot run token by token); use it as an encoder, "
                "and a registered layer where a causal mixer is needed"
            )
        return super().__getattr__(name)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[State, State]]:
        """Both directions over x (B, T, D); ``mask`` (B, T) bool, True = real token."""
        if not isinstance(x, torch.Tensor):
            raise ArgumentTypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3:
            raise ArgumentError(
                f"x must have shape (batch, seq_len, d_model), got {tuple(x.shape)}"
            )
        mask = _check_mask(mask, x.shape[0], x.shape[1], x.device)
        index = None if mask is None else reversal_index(mask)
        y_fwd, state_fwd = self.forward_layer(x, mask=mask)
        y_bwd, state_bwd = self.backward_layer(_reverse(x, index), mask=mask)
        y_bwd = _reverse(y_bwd, index)
        y = torch.cat([y_fwd, y_bwd], dim=-1) if self.merge == "concat" else y_fwd + y_bwd
        return y, (state_fwd, state_bwd)
