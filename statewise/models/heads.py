"""Heads over the block stack: LanguageModel, ClassifierHead, ForecastHead."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from statewise.errors import ArgumentError, ArgumentTypeError
from statewise.models.block import Backbone
from statewise.models.config import SEQUENCE_HEADS, ModelConfig
from statewise.models.rmt import RecurrentMemory
from statewise.models.sampling import check_sampling, sample_next
from statewise.ops.tree import State


class LanguageModel(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab_size).

    With ``config.memory_tokens`` > 0 it is a Recurrent Memory Transformer
    (statewise/models/rmt.py): the sequence runs segment by segment with memory tokens
    carried between segments, and the state is the memory and the current segment.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.embed.weight, std=config.embed_std)
        self.backbone = Backbone(config)
        self.unembed = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.unembed.weight = self.embed.weight
        self.rmt = RecurrentMemory(config) if config.memory_tokens > 0 else None

    def forward(
        self,
        ids: torch.Tensor,
        state: list[State] | None = None,
        mask: torch.Tensor | None = None,
        return_state: bool = False,
        resets: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[State]]:
        """ids (B, T) -> logits (B, T, V); ``resets`` (B, T) bool marks where a new
        document starts inside a packed row (its state starts afresh there)."""
        self._check_ids(ids, rank=2)
        if self.rmt is None:
            h, state = self.backbone(self._embed(ids), state, mask, resets)
        else:
            h, state = self.rmt(self.backbone, self._embed, ids, state, mask, resets)
        logits = self._logits(h)
        return (logits, state) if return_state else logits

    def step(
        self, ids_t: torch.Tensor, state: list[State] | None = None
    ) -> tuple[torch.Tensor, list[State]]:
        """One token per sequence, ids_t (B,) -> logits (B, V) and the new state."""
        self._check_ids(ids_t, rank=1)
        if self.rmt is not None:
            h, state = self.rmt.step(self.backbone, self._embed, ids_t, state)
        else:
            h, state = self.backbone.step(self._embed(ids_t), state)
        return self._logits(h), state

    def init_state(self, batch_size: int, device=None, dtype=None) -> list[State]:
        if self.rmt is not None:
            return self.rmt.init_state(batch_size, device, dtype)
        return self.backbone.init_state(batch_size, device, dtype)

    @torch.no_grad()
    def generate(
        self,
        ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        on_token: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Continue the prompts ``ids`` (B, T) by ``max_new_tokens`` tokens; returns (B, T + N).

        The prompt runs through one parallel forward; then each new token is one ``step``,
        so memory stays constant however long the generation. ``on_token`` receives each new
        token column (B,) as soon as it is drawn (for streaming).
        """
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if ids.dim() != 2 or ids.shape[1] == 0:
            raise ArgumentError("the prompt is empty: generate needs at least one token")
        if max_new_tokens < 0:
            raise ArgumentError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        check_sampling(temperature, top_k, top_p)
        generator = torch.Generator(device=ids.device)
        generator.manual_seed(seed if seed is not None else torch.seed())
        was_training = self.training
        self.eval()
        try:
            logits, state = self(ids, return_state=True)
            logits, out = logits[:, -1], [ids]
            for i in range(max_new_tokens):
                token = sample_next(logits, temperature, top_k, top_p, generator)
                out.append(token[:, None])
                if on_token is not None:
                    on_token(token)
                if i + 1 < max_new_tokens:
                    logits, state = self.step(token, state)
        finally:
            self.train(was_training)
        return torch.cat(out, dim=1)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        return x * self.config.embed_scale if self.config.embed_scale != 1.0 else x

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.unembed(h)
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap > 0 else logits

    def _check_ids(self, ids: torch.Tensor, rank: int) -> None:
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
            raise ArgumentTypeError("ids must be an integer tensor of token ids")
        if ids.dim() != rank:
            raise ArgumentError(f"ids must have {rank} dimensions, got shape {tuple(ids.shape)}")
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ArgumentError(f"ids must lie in [0, {self.config.vocab_size})")


class ClassifierHead(nn.Module):
    """A sequence (B, T) of token ids, or (B, T, input_dim) of values -> logits (B, n_classes).

    The class is read from the state after the last real token (the model is causal, so
    that token has seen the whole sequence).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = input_layer(config)
        self.backbone = Backbone(config)
        self.classify = nn.Linear(config.d_model, config.n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h, _ = self.backbone(self.embed(x), None, mask)
        return self.classify(last_real(h, mask))


class ForecastHead(nn.Module):
    """A window (B, T, input_dim) of a series -> the next values (B, horizon, input_dim)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Linear(config.input_dim, config.d_model)
        self.backbone = Backbone(config)
        self.project = nn.Linear(config.d_model, config.horizon * config.input_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.config.input_dim:
            raise ArgumentError(
                f"x must have shape (batch, seq_len, {self.config.input_dim}), got {tuple(x.shape)}"
            )
        h, _ = self.backbone(self.embed(x), None, mask)
        out = self.project(last_real(h, mask))
        return out.view(x.shape[0], self.config.horizon, self.config.input_dim)


def input_layer(config: ModelConfig) -> nn.Module:
    """Token embedding, N(0, embed_std^2) as the language model's, or a linear map of values."""
    if config.vocab_size > 0:
        embed = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(embed.weight, std=config.embed_std)
        return embed
    return nn.Linear(config.input_dim, config.d_model)


def last_real(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """h (B, T, D) at each row's last True position of mask (the last position if None)."""
    if mask is None:
        return h[:, -1]
    positions = torch.arange(h.shape[1], device=h.device).expand_as(mask)
    last = torch.where(mask, positions, -1).max(dim=1).values
    if (last < 0).any():
        raise ArgumentError("mask has a row with no real token")
    return h[torch.arange(h.shape[0], device=h.device), last]


def torch_style_rnn(config: ModelConfig) -> nn.Module:
    """statewise.layers.LSTM/GRU/RNN (drop-ins for torch.nn's) as described by ``config``."""
    from statewise.layers.classic import TORCH_STYLE

    cls = TORCH_STYLE[config.layer]
    return cls(config.input_dim, config.d_model, config.n_layers, **config.layer_kwargs)


HEADS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "lm": LanguageModel,
    "classifier": ClassifierHead,
    "forecaster": ForecastHead,
    "rnn": torch_style_rnn,
}


def build_model(config: ModelConfig) -> nn.Module:
    """The model named by ``config.head`` over a stack of ``config.layer`` blocks."""
    if config.head in SEQUENCE_HEADS:  # their models import this module
        from statewise.models.sequence_heads import build_sequence_head

        return build_sequence_head(config)
    return HEADS[config.head](config)
