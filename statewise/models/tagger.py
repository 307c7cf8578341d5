"""Sequence tagger: one label per token, from an encoder's outputs, with a linear-chain CRF
(the BiLSTM-CRF of Huang et al. 2015 and Lample et al. 2016) or a per-token softmax.

    h   = encoder(x)                 (B, T, D), causal or bidirectional
                                     (:class:`statewise.models.recognizer.SequenceEncoder`)
    e_t = W h_t + b                  (B, T, L) emission scores of the L tags

With a CRF the tag sequence is scored as a whole, score(y) = s_{y_1} + sum_t e_t(y_t) +
sum_{t>1} A[y_{t-1}, y_t] + f_{y_T} (:mod:`statewise.ops.crf`); the loss is -log P(y|x)
summed over the sequences and divided by the number of real tokens, and decoding is
Viterbi's best path. Without, each token is classified alone: the loss is the
cross-entropy of softmax(e_t) averaged over the real tokens, and decoding takes argmax_j
e_t(j). Both losses are per token, so one learning rate suits both. The CRF's transition
scores let decoding rule out tag pairs that never follow each other in training (I-X
after O in BIO) and carry evidence along a span, which a causal encoder cannot do for the
tokens before the evidence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError
from statewise.models.config import ModelConfig
from statewise.models.encoder import SequenceEncoder
from statewise.ops.crf import CRF

PADDING_TAG = -1


class TaggerModel(nn.Module):
    """Token ids (B, T) or features (B, T, input_dim) -> emission scores (B, T, L), with
    L = ``config.n_classes`` tags (module docstring)."""

    def __init__(self, config: ModelConfig, bidirectional: bool = True, crf: bool = True) -> None:
        super().__init__()
        self.encoder = SequenceEncoder(config, bidirectional)
        self.emit = nn.Linear(config.d_model, config.n_classes)
        self.crf = CRF(config.n_classes) if crf else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Emission scores (B, T, L); ``mask`` (B, T) bool marks real tokens (right padding)."""
        return self.emit(self.encoder(x, mask))

    def loss(
        self,
        x: torch.Tensor,
        tags: torch.Tensor,
        mask: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """The loss (module docstring); tags (B, T), ignored at padding. "mean": per real
        token; "sum": the total (mean = sum / the count of real tokens)."""
        if reduction not in ("mean", "sum"):
            raise ArgumentError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        emissions = self(x, mask)
        real = torch.ones_like(tags, dtype=torch.bool) if mask is None else mask
        if self.crf is None:
            total = F.cross_entropy(emissions[real], tags[real], reduction="sum")
        else:
            total = self.crf(emissions, tags, mask, reduction="sum")
        return total / real.sum() if reduction == "mean" else total

    @torch.no_grad()
    def decode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The tags (B, T) int64: Viterbi's path or each token's argmax; -1 at padding."""
        emissions = self(x, mask)
        if self.crf is not None:
            return self.crf.decode(emissions, mask).tags
        tags = emissions.argmax(dim=-1)
        return tags if mask is None else tags.masked_fill(~mask, PADDING_TAG)
