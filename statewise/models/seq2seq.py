"""Encoder-decoder over any registered layers, with additive or multiplicative attention.

    memory  = encoder(source)                          (B, S, D), a stack of blocks, causal or
                                                       bidirectional (models.encoder)
    summary = memory at each source's last real position     (B, D)
    state_0 = init_state + bridge(summary)             decoder state, leaf by leaf
    h_t     = decoder(embed(y_{t-1}), state)           (B, D), causal; steps in O(1)
    with attention:
        e_ts   = v^T tanh(W_q h_t + W_k m_s)           "bahdanau" (additive, Bahdanau 2015)
               = h_t^T W m_s                           "luong" (general, Luong 2015)
        a_t    = softmax_s(e_t), masked to real source positions
        c_t    = sum_s a_ts m_s
        o_t    = tanh(W_c [c_t; h_t])
    without attention: o_t = h_t (the source reaches the decoder through state_0 only, as in
    Sutskever et al. 2014)
    p(y_t | y_<t, x) = softmax(W_o o_t)

The decoder's state shapes differ by layer family (a vector for lstm, a matrix per head for
retnet, ...), so the bridge is one linear map from the summary to every floating leaf of
the decoder's initial state (complex leaves as real and imaginary parts), added to the
layer's own initial value; integer leaves (position counters) and empty leaves (a KV cache
that grows) are left as they are. Deliberate difference from Bahdanau et al.: their
attention query is the previous decoder state s_{t-1} and the context enters the RNN's
input; here both kinds query the decoder's output h_t, as Luong et al. do, so that the
decoder stack trains on the whole target in one parallel forward whatever its layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError
from statewise.models.block import Backbone
from statewise.models.config import ModelConfig
from statewise.models.encoder import SequenceEncoder
from statewise.models.heads import last_real
from statewise.ops.tree import State, tree_leaves, tree_unflatten
from statewise.tasks.base import IGNORE
from statewise.tasks.transduction import PAD

ATTENTIONS = ("bahdanau", "luong", None)
REDUCTIONS = ("mean", "sum")


class Attention(nn.Module):
    """Scores of decoder outputs against encoder memory, and the context they give."""

    def __init__(self, kind: str, d_model: int) -> None:
        super().__init__()
        if kind not in ("bahdanau", "luong"):
            raise ArgumentError(f"attention must be one of {ATTENTIONS}, got {kind!r}")
        self.kind = kind
        self.key = nn.Linear(d_model, d_model, bias=kind == "bahdanau")
        if kind == "bahdanau":
            self.query = nn.Linear(d_model, d_model, bias=False)
            self.score = nn.Linear(d_model, 1, bias=False)
        self.combine = nn.Linear(2 * d_model, d_model)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """W_k m (bahdanau) or W m (luong): (B, S, D), computed once per source."""
        return self.key(memory)

    def forward(
        self, h: torch.Tensor, memory: torch.Tensor, keys: torch.Tensor, source_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, U, D) -> (o (B, U, D), weights (B, U, S))."""
        if self.kind == "bahdanau":
            hidden = torch.tanh(self.query(h).unsqueeze(2) + keys.unsqueeze(1))  # (B, U, S, D)
            scores = self.score(hidden).squeeze(-1)
        else:
            scores = h @ keys.transpose(1, 2)
        scores = scores.masked_fill(~source_mask.unsqueeze(1), float("-inf"))
        weights = scores.softmax(-1)
        context = weights @ memory
        return torch.tanh(self.combine(torch.cat([context, h], -1))), weights


class StateBridge(nn.Module):
    """summary (B, D) -> the decoder's initial state: init_state + a linear map per leaf."""

    def __init__(self, decoder: Backbone, d_model: int) -> None:
        super().__init__()
        self.maps = nn.ModuleDict()
        for i, leaf in enumerate(tree_leaves(decoder.init_state(1))):
            width = leaf[0].numel() * (2 if leaf.is_complex() else 1)
            if width and (leaf.is_floating_point() or leaf.is_complex()):
                self.maps[str(i)] = nn.Linear(d_model, width)

    def forward(self, summary: torch.Tensor, initial: list[State]) -> list[State]:
        leaves = []
        for i, leaf in enumerate(tree_leaves(initial)):
            if str(i) not in self.maps:
                leaves.append(leaf)
                continue
            shift = self.maps[str(i)](summary)
            if leaf.is_complex():
                shift = torch.view_as_complex(shift.view(*leaf.shape, 2).contiguous())
            leaves.append(leaf + shift.view(leaf.shape).to(leaf.dtype))
        return tree_unflatten(initial, leaves)


class Encoded:
    """What the decoder needs of a source: memory, keys, mask and the initial state."""

    def __init__(
        self, memory: torch.Tensor, keys: torch.Tensor | None, mask: torch.Tensor, state: list
    ) -> None:
        self.memory, self.keys, self.mask, self.state = memory, keys, mask, state

    def select(self, rows: torch.Tensor) -> Encoded:
        """The rows ``rows`` (e.g. each source repeated for its beams); state excluded."""
        keys = None if self.keys is None else self.keys[rows]
        return Encoded(self.memory[rows], keys, self.mask[rows], [])


class Seq2SeqModel(nn.Module):
    """Source (B, S) ids or (B, S, F) features -> target logits (module docstring).

    encoder, decoder: ModelConfig of each stack (any layers; the decoder's must step).
    encoder.vocab_size > 0: token ids; 0: real features of width encoder.input_dim.
    decoder.vocab_size: the target vocabulary, BOS / EOS included. Both use decoder.d_model
    (the encoder's output is projected when the widths differ). bidirectional: each
    encoder block reads the source both ways.
    """

    def __init__(
        self,
        encoder: ModelConfig,
        decoder: ModelConfig,
        attention: str | None = "bahdanau",
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ArgumentError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if decoder.vocab_size < 1:
            raise ArgumentError("decoder.vocab_size must be the target vocabulary (>= 1)")
        self.encoder_config, self.decoder_config = encoder, decoder
        d_model = decoder.d_model
        self.encoder = SequenceEncoder(encoder, bidirectional)
        self.to_decoder = (
            nn.Identity() if encoder.d_model == d_model else nn.Linear(encoder.d_model, d_model)
        )
        self.target_embed = nn.Embedding(decoder.vocab_size, d_model)
        nn.init.normal_(self.target_embed.weight, std=decoder.embed_std or 0.02)
        self.decoder = Backbone(decoder)
        self.bridge = StateBridge(self.decoder, d_model)
        self.attention = None if attention is None else Attention(attention, d_model)
        self.output = nn.Linear(d_model, decoder.vocab_size)

    def encode(self, source: torch.Tensor, source_mask: torch.Tensor | None = None) -> Encoded:
        """Run the encoder; source_mask (B, S) bool, True at real positions (right padding)."""
        if source_mask is None:
            source_mask = torch.ones(source.shape[:2], dtype=torch.bool, device=source.device)
        if source_mask.shape != source.shape[:2] or source_mask.dtype != torch.bool:
            raise ArgumentError(
                f"source_mask must be bool of shape {tuple(source.shape[:2])}, got "
                f"{source_mask.dtype} {tuple(source_mask.shape)}"
            )
        memory = self.to_decoder(self.encoder(source, source_mask))
        summary = last_real(memory, source_mask)
        initial = self.decoder.init_state(source.shape[0], source.device, memory.dtype)
        keys = None if self.attention is None else self.attention.keys(memory)
        return Encoded(memory, keys, source_mask, self.bridge(summary, initial))

    def forward(
        self,
        source: torch.Tensor,
        target_in: torch.Tensor,
        source_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher forcing: target_in (B, U) starts with BOS -> (logits (B, U, V), attention
        weights (B, U, S) or None)."""
        enc = self.encode(source, source_mask)
        h, _ = self.decoder(self.target_embed(target_in), enc.state)
        return self._read(h, enc)

    def loss(
        self, source: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        """Teacher-forced cross-entropy of token-id pairs: source (B, S) and target (B, U) =
        BOS y_1 .. y_n EOS, both right-padded with 0 (the PAD id). Each target token after
        BOS is predicted from the ones before it; "mean" averages over the real ones, "sum"
        adds them (mean = sum / the count of nonzero target[:, 1:])."""
        if reduction not in REDUCTIONS:
            raise ArgumentError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        width = int((source != PAD).sum(1).max().clamp_min(1))  # drop all-padding columns
        source = source[:, :width]
        mask = source != PAD
        logits, _ = self(source, target[:, :-1], mask if not bool(mask.all()) else None)
        wanted = target[:, 1:].masked_fill(target[:, 1:] == PAD, IGNORE)
        return F.cross_entropy(
            logits.flatten(0, 1), wanted.flatten(), ignore_index=IGNORE, reduction=reduction
        )

    def step(
        self, token: torch.Tensor, state: list[State], enc: Encoded
    ) -> tuple[torch.Tensor, list[State], torch.Tensor | None]:
        """One target token per row (B,) -> (log-probabilities (B, V), state, weights (B, S))."""
        h, state = self.decoder.step(self.target_embed(token), state)
        logits, weights = self._read(h.unsqueeze(1), enc)
        return (
            F.log_softmax(logits.squeeze(1), -1),
            state,
            None if weights is None else weights.squeeze(1),
        )

    def _read(self, h: torch.Tensor, enc: Encoded) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.attention is None:
            return self.output(h), None
        o, weights = self.attention(h, enc.memory, enc.keys, enc.mask)
        return self.output(o), weights
