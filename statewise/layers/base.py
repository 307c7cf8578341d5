"""The layer contract shared by every sequence mixer (see docs/contract.md).

    y, state = layer(x, state=None, mask=None)   # x: (B, T, D); y: (B, T, D)
    y_t, state = layer.step(x_t, state)          # x_t: (B, D); O(1) time and memory
    state = layer.init_state(batch_size, device=None, dtype=None)
    layer.mode                                   # "auto" or one of layer.modes

Subclasses set ``modes`` and implement ``_forward``, ``_step`` and ``_init_state``. This
class validates everything at the public boundary, so the ops below never see a tensor
of the wrong rank, width, dtype or batch size.
"""

from __future__ import annotations

import torch
from torch import nn

from statewise.errors import ArgumentError, ArgumentTypeError
from statewise.ops.tree import State, tree_leaves, tree_map


class SequenceMixer(nn.Module):
    """Base class of every registered layer: a causal map (B, T, D) -> (B, T, D) with a state."""

    modes: tuple[str, ...] = ()
    # The token embedding a language model over this layer starts with, unless its
    # ModelConfig says otherwise: N(0, embed_std^2), tied with the output matrix or not.
    # GPT-2's small tied embedding suits most layers; see Attention for the exception.
    embed_std: float = 0.02
    tie_embeddings: bool = True

    def __init__(self, d_model: int, mode: str = "auto") -> None:
        super().__init__()
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model <= 0:
            raise ArgumentError(f"d_model must be a positive int, got {d_model!r}")
        self.d_model = d_model
        self.mode = mode

    # ----------------------------------------------------------------- mode
    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value != "auto" and value not in self.modes:
            raise ArgumentError(
                f"mode must be 'auto' or one of {self.modes} for {type(self).__name__}, "
                f"got {value!r}"
            )
        self._mode = value

    def resolve_mode(self, seq_len: int) -> str:
        """The mode a forward over ``seq_len`` tokens runs in."""
        return self._mode if self._mode != "auto" else self.auto_mode(seq_len)

    def auto_mode(self, seq_len: int) -> str:
        """The fastest mode for a sequence of this length; layers override with measurements."""
        return self.modes[-1]

    # -------------------------------------------------------- public calls
    def forward(
        self, x: torch.Tensor, state: State | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        self._check_input(x, rank=3, name="x")
        batch, seq_len, _ = x.shape
        mask = _check_mask(mask, batch, seq_len, x.device)
        state = self._checked_state(state, batch, x)
        return self._forward(x, state, mask, self.resolve_mode(seq_len))

    def step(self, x_t: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        self._check_input(x_t, rank=2, name="x_t")
        state = self._checked_state(state, x_t.shape[0], x_t)
        return self._step(x_t, state)

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> State:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
        if dtype is not None and not dtype.is_floating_point:
            raise ArgumentTypeError(f"dtype must be a floating dtype, got {dtype}")
        ref = self._reference_tensor()
        return self._init_state(
            batch_size,
            torch.device(device) if device is not None else ref.device,
            dtype if dtype is not None else ref.dtype,
        )

    @property
    def state_size(self) -> int:
        """Floating-point numbers held in the state of one sequence."""
        return sum(t.numel() for t in tree_leaves(self.init_state(1)) if t.is_floating_point())

    # -------------------------------------------------- for subclasses
    def _forward(
        self, x: torch.Tensor, state: State, mask: torch.Tensor | None, mode: str
    ) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def _step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> State:
        raise NotImplementedError

    # ----------------------------------------------------------- checks
    def _reference_tensor(self) -> torch.Tensor:
        for p in self.parameters():
            if p.is_floating_point():
                return p
        return torch.empty(0)

    def _check_input(self, x: torch.Tensor, rank: int, name: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != rank:
            shape = "(batch, seq_len, d_model)" if rank == 3 else "(batch, d_model)"
            raise ArgumentError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
        if x.shape[-1] != self.d_model:
            raise ArgumentError(
                f"{name} has width {x.shape[-1]} but the layer's d_model is {self.d_model}"
            )
        if x.shape[0] == 0:
            raise ArgumentError(f"{name} has an empty batch")
        if not x.is_floating_point():
            raise ArgumentTypeError(f"{name} must be a floating tensor, got {x.dtype}")
        ref = self._reference_tensor()
        if ref.numel() and x.dtype != ref.dtype:
            raise ArgumentTypeError(
                f"{name} has dtype {x.dtype} but the layer's parameters are {ref.dtype}; "
                f"convert one of them (e.g. layer.to({x.dtype}))"
            )
        if not torch.isfinite(x).all():
            raise ArgumentError(f"{name} contains NaN or inf")

    def _checked_state(self, state: State | None, batch: int, x: torch.Tensor) -> State:
        if state is None:
            return self._fresh_state(batch, x.device, x.dtype)
        # the template only lends shapes and dtypes: on the meta device it costs no memory
        # (a KV cache's zeros are megabytes, allocated anew on every call otherwise)
        template = self._init_state(batch, torch.device("meta"), x.dtype)
        try:
            tree_map(lambda leaf, expected: _check_leaf(leaf, expected, x.device), state, template)
        except (KeyError, TypeError, ValueError) as err:
            raise ArgumentError(f"state does not fit this layer and batch: {err}") from None
        return state

    def _fresh_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> State:
        """The state a forward or step starts from when given none: ``init_state``. A layer
        may return something cheaper that reads the same (it never leaves the layer)."""
        return self.init_state(batch, device=device, dtype=dtype)


def _check_leaf(leaf: torch.Tensor, expected: torch.Tensor, device: torch.device) -> torch.Tensor:
    if not isinstance(leaf, torch.Tensor):
        raise ArgumentTypeError(f"expected a tensor, got {type(leaf).__name__}")
    if leaf.shape != expected.shape:
        raise ArgumentError(
            f"a state tensor has shape {tuple(leaf.shape)}, expected {tuple(expected.shape)}"
        )
    if leaf.dtype != expected.dtype:
        raise ArgumentError(f"a state tensor has dtype {leaf.dtype}, expected {expected.dtype}")
    if leaf.device != device:
        raise ArgumentError(f"a state tensor is on {leaf.device}, expected {device}")
    return leaf


def _check_mask(
    mask: torch.Tensor | None, batch: int, seq_len: int, device: torch.device
) -> torch.Tensor | None:
    """Validate ``mask`` (B, T), True = real token; an all-True mask becomes None."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise ArgumentTypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ArgumentTypeError(f"mask must be a bool tensor (True = real token), got {mask.dtype}")
    if mask.shape != (batch, seq_len):
        raise ArgumentError(f"mask must have shape {(batch, seq_len)}, got {tuple(mask.shape)}")
    if mask.device != device:
        raise ArgumentError(f"mask is on {mask.device}, x is on {device}")
    return None if bool(mask.all()) else mask
