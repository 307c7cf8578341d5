"""The residual pre-norm block and the stack of blocks every head is built on.

    x = x + dropout(mixer(norm_1(x)))
    x = x + dropout(mlp(norm_2(x)))

mlp(u) is W_2 gelu(W_1 u) ("gelu"), W_2 (gelu_tanh(W_g u) * W_1 u) ("geglu", as in Gemma)
or W_2 (silu(W_g u) * W_1 u) ("swiglu"); every linear map has a bias.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from statewise import layers
from statewise.errors import ArgumentError
from statewise.models.config import ModelConfig
from statewise.ops.tree import State


class RMSNormPlusOne(nn.Module):
    """x / rms(x) * (1 + w), with w initialised to 0 (Gemma's RMSNorm)."""

    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, x.shape[-1:], eps=self.eps) * (1 + self.weight)


def make_norm(kind: str, d_model: int, eps: float) -> nn.Module:
    if kind == "rmsnorm_plus_one":
        return RMSNormPlusOne(d_model, eps)
    return nn.RMSNorm(d_model, eps=eps) if kind == "rmsnorm" else nn.LayerNorm(d_model, eps=eps)


class MLP(nn.Module):
    def __init__(self, kind: str, d_model: int, hidden: int) -> None:
        super().__init__()
        self.kind = kind
        self.up = nn.Linear(d_model, hidden)
        self.gate = nn.Linear(d_model, hidden) if kind != "gelu" else None
        self.down = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return self.down(F.gelu(self.up(x)))
        gate = self.gate(x)
        act = F.gelu(gate, approximate="tanh") if self.kind == "geglu" else F.silu(gate)
        return self.down(act * self.up(x))


def make_mixer(config: ModelConfig, index: int) -> layers.SequenceMixer:
    """Block ``index``'s mixer; layers whose constructor takes ``layer_index`` and
    ``n_layers`` (such as HGRN, whose forget-gate lower bound grows with depth) get them."""
    name = config.layer_at(index)
    kwargs = config.kwargs_for(name)
    accepted = inspect.signature(layers.info(name).cls.__init__).parameters
    if "layer_index" in accepted:
        kwargs["layer_index"] = index
    if "n_layers" in accepted:
        kwargs["n_layers"] = config.n_layers
    return layers.get(name, d_model=config.d_model, **kwargs)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, index: int) -> None:
        super().__init__()
        self.norm_1 = make_norm(config.norm, config.d_model, config.norm_eps)
        self.mixer = make_mixer(config, index)
        self.dropout = nn.Dropout(config.dropout)
        hidden = int(round(config.mlp_ratio * config.d_model))
        if hidden > 0:
            self.norm_2 = make_norm(config.norm, config.d_model, config.norm_eps)
            self.mlp = MLP(config.mlp, config.d_model, hidden)
        else:
            self.mlp = None

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        mask: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
        dt: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        y, state = self.mixer(self.norm_1(x), state, mask, resets, dt)
        return self._finish(x + self.dropout(y)), state

    def step(
        self, x_t: torch.Tensor, state: State | None = None, dt: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        y_t, state = self.mixer.step(self.norm_1(x_t), state, dt)
        return self._finish(x_t + self.dropout(y_t)), state

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        if self.mlp is None:
            return x
        return x + self.dropout(self.mlp(self.norm_2(x)))


class LockedDropout(nn.Module):
    """Variational ("locked") dropout: x (B, T, D) times one mask (B, 1, D) of
    Bernoulli(1 - p) / (1 - p), drawn per call and shared by every time step, so a
    channel dropped for a sequence stays dropped over all of it (Gal & Ghahramani 2016;
    AWD-LSTM's LockedDropout). Identity in eval mode or with p = 0. On a single step
    x_t (B, D) the mask is (B, D), drawn per call: one step is one forward."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        shape = (x.shape[0], 1, x.shape[-1]) if x.dim() == 3 else x.shape
        keep = torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Backbone(nn.Module):
    """n_layers blocks and a final norm; the state is a list with one entry per block.
    With model.locked_dropout, :class:`LockedDropout` applies to every block's input and to
    the last block's output (before the final norm)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = make_norm(config.norm, config.d_model, config.norm_eps)
        self.locked_dropout = LockedDropout(config.locked_dropout)

    def forward(
        self,
        x: torch.Tensor,
        state: list[State] | None = None,
        mask: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
        dt: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[State]]:
        """``dt`` (B, T), the time since each token's predecessor, goes to every block's
        mixer (continuous-time layers use it; the others refuse it)."""
        state = self._check_state(state)
        new_state = []
        for block, s in zip(self.blocks, state):
            x, s = block(self.locked_dropout(x), s, mask, resets, dt)
            new_state.append(s)
        return self.norm(self.locked_dropout(x)), new_state

    def step(
        self,
        x_t: torch.Tensor,
        state: list[State] | None = None,
        dt: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[State]]:
        state = self._check_state(state)
        new_state = []
        for block, s in zip(self.blocks, state):
            x_t, s = block.step(self.locked_dropout(x_t), s, dt)
            new_state.append(s)
        return self.norm(self.locked_dropout(x_t)), new_state

    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> list[State]:
        return [b.mixer.init_state(batch_size, device, dtype) for b in self.blocks]

    def _check_state(self, state: list[State] | None) -> list[State | None]:
        if state is None:
            return [None] * len(self.blocks)
        if not isinstance(state, (list, tuple)) or len(state) != len(self.blocks):
            raise ArgumentError(
                f"state must be a list with one entry per layer ({len(self.blocks)})"
            )
        return list(state)
