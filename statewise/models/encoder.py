"""The encoder of the recognisers and the tagger (:mod:`statewise.models.recognizer`,
:mod:`statewise.models.tagger`):

    h = stack(W_in x)                        x (B, T, F) features, or (B, T) token ids
    stack: the causal Backbone (n_layers residual blocks; it steps, so recognition streams)
           or, bidirectional, the same blocks with each mixer read both ways:
               a = [fwd(norm_1(x)); bwd(norm_1(x))]     Bidirectional(mixer), (B, T, 2D)
               x = x + W_merge a                        back to D
               x = x + mlp(norm_2(x))                   as the causal block

Concatenation and a projection, rather than Bidirectional's merge="sum", let each output
channel weigh the two directions on its own (the sum is W_merge = [I, I]); the two
directions of a block have their own parameters and initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

from statewise.errors import ArgumentError
from statewise.layers.bidirectional import Bidirectional
from statewise.models.block import Backbone, Block, make_mixer
from statewise.models.config import ModelConfig
from statewise.models.heads import input_layer
from statewise.ops.tree import State


def length_mask(lengths: torch.Tensor, seq_len: int) -> torch.Tensor | None:
    """(B, T) bool, True at each row's first ``lengths`` positions; None when all are real."""
    if bool((lengths == seq_len).all()):
        return None
    return torch.arange(seq_len, device=lengths.device) < lengths[:, None]


class BidirectionalBlock(Block):
    """A residual block whose mixer reads the sequence both ways (module docstring); it
    has no ``step``."""

    def __init__(self, config: ModelConfig, index: int) -> None:
        super().__init__(config, index)
        both = Bidirectional(self.mixer, merge="concat")
        both.backward_layer = make_mixer(config, index)  # initialised apart from the forward
        self.mixer = both
        self.merge = nn.Linear(2 * config.d_model, config.d_model)

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        mask: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
        dt: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        if state is not None or resets is not None or dt is not None:
            raise ArgumentError("a bidirectional block takes no state, resets or dt")
        y, states = self.mixer(self.norm_1(x), mask)
        return self._finish(x + self.dropout(self.merge(y))), states


class BidirectionalBackbone(Backbone):
    """The Backbone (norms, locked dropout, final norm) over bidirectional blocks."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)  # its forward loop and norms; its causal blocks are replaced
        self.blocks = nn.ModuleList(BidirectionalBlock(config, i) for i in range(config.n_layers))


class SequenceEncoder(nn.Module):
    """x (B, T, input_dim) features or (B, T) token ids (config.vocab_size > 0) -> h (B, T,
    d_model): an input layer and a causal or bidirectional stack (module docstring)."""

    def __init__(self, config: ModelConfig, bidirectional: bool) -> None:
        super().__init__()
        self.causal = not bidirectional
        self.embed = input_layer(config)
        self.backbone = BidirectionalBackbone(config) if bidirectional else Backbone(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (B, T) bool, True at real positions."""
        h, _ = self.backbone(self.embed(x), None, mask)
        return h

    def step(self, x_t: torch.Tensor, state: list[State] | None) -> tuple[torch.Tensor, list]:
        """One frame per row, x_t (B, input_dim) or (B,) ids -> (h_t (B, d_model), state);
        ``state=None`` starts fresh. Causal encoders only."""
        if not self.causal:
            raise ArgumentError(
                "a bidirectional encoder reads the whole sequence before its first output: "
                "it cannot step (use bidirectional=False to stream)"
            )
        return self.backbone.step(self.embed(x_t), state)
