"""Recognisers: sequences of feature vectors (B, T, F) -> label sequences, with a CTC head
(Graves et al. 2006) or an RNN transducer (Graves 2012). Labels are 1..V-1; 0 is the blank
of both heads.

The encoder is :class:`statewise.models.encoder.SequenceEncoder` (causal, or bidirectional).

CTC:  log p_t = log_softmax(W_c h_t) over V symbols; the loss is torch.nn.CTCLoss, each
sequence's -log P(y|x) divided by its label count, averaged over the batch (torch's
"mean"), with zero_infinity=True: a pair with fewer frames than CTC needs (U labels plus
one blank between each two equal neighbours) has P = 0 and an infinite loss, whose
gradient would be NaN and poison the whole batch; the estimators refuse such pairs up
front, the flag keeps a direct caller's batch trainable. Decoding: best path or prefix
beam search (:mod:`statewise.ops.ctc_decode`).

Transducer:

    g_u    = prediction(embed(y_u)),  y_0 = the start symbol     (B, U+1, D_p), causal
    z(t,u) = W_o tanh(W_e h_t + W_p g_u)                         (B, T, U+1, V), the joiner
    loss   = transducer_loss(log_softmax(z)) / U per sequence, averaged over the batch

The start symbol is the blank's embedding row (the blank is never a label, so the row has
no other use). Dividing by U (at least 1) puts the loss on CTCLoss's per-label scale.

Greedy transducer decoding, one frame at a time: at frame t, with g the prediction
network's output after the labels emitted so far, take k = argmax_v z(t, u)_v; a blank
moves on to frame t+1; a label is emitted, stepped through the prediction network (O(1)),
and frame t is read again. At most ``max_symbols_per_frame`` labels are emitted per frame
(after that the frame is left as if the next symbol were a blank): a model that never
predicts a blank would otherwise never leave the frame. 4 is far above what a task with
more frames than labels needs (one label per frame suffices there) and bounds the work of
an untrained model at 5 joiner calls per frame. Since only the joiner and the prediction
network look at the labels, decoding runs the same on an encoder output computed in
parallel (:meth:`TransducerRecognizer.decode`) as on one stepped frame by frame
(:meth:`~TransducerRecognizer.stream_step`, causal encoders only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError
from statewise.models.block import Backbone
from statewise.models.config import ModelConfig
from statewise.models.encoder import SequenceEncoder, length_mask
from statewise.ops.ctc_decode import ctc_beam_search, ctc_greedy_decode
from statewise.ops.transducer import transducer_loss
from statewise.ops.tree import carry

BLANK = 0
HEADS = ("ctc", "transducer")


def reduce_rows(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    """The mean or the sum of per-row losses (B,)."""
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    raise ArgumentError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


class CTCRecognizer(nn.Module):
    """Encoder + a linear map to V symbols, trained with CTC (module docstring).
    ``config.n_classes`` is V, the blank (0) included."""

    def __init__(self, config: ModelConfig, bidirectional: bool = False) -> None:
        super().__init__()
        self.encoder = SequenceEncoder(config, bidirectional)
        self.classify = nn.Linear(config.d_model, config.n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Per-frame log-probabilities (B, T, V); frames past ``lengths`` are padding."""
        h = self.encoder(x, length_mask(lengths, x.shape[1]))
        return F.log_softmax(self.classify(h), dim=-1)

    def loss(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        labels: torch.Tensor,
        label_lengths: torch.Tensor,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """The per-label CTC loss of each row, averaged ("mean") or added ("sum") over the
        rows; labels (B, U) padded, label_lengths (B,)."""
        log_probs = self(x, lengths)
        losses = F.ctc_loss(
            log_probs.transpose(0, 1),
            labels,
            lengths,
            label_lengths,
            blank=BLANK,
            reduction="none",
            zero_infinity=True,
        )
        return reduce_rows(losses / label_lengths.clamp(min=1), reduction)

    @torch.no_grad()
    def decode(self, x: torch.Tensor, lengths: torch.Tensor, beam: int = 1) -> list[list[int]]:
        """Best path labels of each row (beam=1), or prefix beam search's best."""
        log_probs = self(x, lengths)
        if beam == 1:
            return ctc_greedy_decode(log_probs, lengths, blank=BLANK)
        hypotheses = ctc_beam_search(log_probs, lengths, blank=BLANK, beam_width=beam)
        return [row[0].labels for row in hypotheses]


class Joiner(nn.Module):
    """z(t, u) = W_o tanh(W_e h_t + W_p g_u): W_e and W_p project into ``width`` units."""

    def __init__(self, d_encoder: int, d_prediction: int, width: int, n_symbols: int) -> None:
        super().__init__()
        self.encoder_proj = nn.Linear(d_encoder, width)
        self.prediction_proj = nn.Linear(d_prediction, width, bias=False)
        self.out = nn.Linear(width, n_symbols)

    def forward(self, encoded: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        """Both already projected, broadcastable: (..., width) -> logits (..., V)."""
        return self.out(torch.tanh(encoded + predicted))


class TransducerRecognizer(nn.Module):
    """Encoder, prediction network and joiner (module docstring).

    encoder: ModelConfig of the encoder (n_classes = V symbols, the blank included).
    prediction: ModelConfig of the prediction network (a causal stack; its input is the
    label embedding). joiner_width: the joiner's hidden units (default: encoder.d_model).
    """

    def __init__(
        self,
        encoder: ModelConfig,
        prediction: ModelConfig,
        bidirectional: bool = False,
        joiner_width: int | None = None,
        max_symbols_per_frame: int = 4,
    ) -> None:
        super().__init__()
        if max_symbols_per_frame < 1:
            raise ArgumentError(
                f"max_symbols_per_frame must be >= 1, got {max_symbols_per_frame!r}"
            )
        self.n_symbols = encoder.n_classes
        self.max_symbols_per_frame = max_symbols_per_frame
        self.encoder = SequenceEncoder(encoder, bidirectional)
        self.embed_label = nn.Embedding(self.n_symbols, prediction.d_model)
        self.prediction = Backbone(prediction)
        width = joiner_width or encoder.d_model
        self.joiner = Joiner(encoder.d_model, prediction.d_model, width, self.n_symbols)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Joiner logits (B, T, U+1, V) for frames x (B, T, F) and labels (B, U) (teacher
        forcing; entries past a row's label count are padding and only feed later cells)."""
        h = self.encoder(x, length_mask(lengths, x.shape[1]))
        start = labels.new_full((labels.shape[0], 1), BLANK)
        g, _ = self.prediction(self.embed_label(torch.cat([start, labels], dim=1)))
        encoded = self.joiner.encoder_proj(h).unsqueeze(2)
        return self.joiner(encoded, self.joiner.prediction_proj(g).unsqueeze(1))

    def loss(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        labels: torch.Tensor,
        label_lengths: torch.Tensor,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """-log P(y|x) / max(U, 1) of each row, averaged ("mean") or added ("sum")."""
        logp = F.log_softmax(self(x, lengths, labels), dim=-1)
        losses = transducer_loss(logp, labels, lengths, label_lengths, BLANK, reduction="none")
        return reduce_rows(losses / label_lengths.clamp(min=1), reduction)

    # ---- greedy decoding -----------------------------------------------------------------

    @torch.no_grad()
    def decode(self, x: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        """Greedy labels of each row, from the encoder run over all frames at once."""
        h = self.encoder(x, length_mask(lengths, x.shape[1]))
        encoded = self.joiner.encoder_proj(h)
        decoder = self.prediction_start(x.shape[0], encoded)
        out: list[list[int]] = [[] for _ in range(x.shape[0])]
        for t in range(x.shape[1]):
            decoder = self._read_frame(encoded[:, t], decoder, t < lengths, out)
        return out

    @torch.no_grad()
    def init_stream(self, batch_size: int) -> tuple:
        """The state of ``batch_size`` streams before their first frame."""
        param = self.joiner.out.weight
        return None, self.prediction_start(batch_size, param)

    @torch.no_grad()
    def stream_step(self, x_t: torch.Tensor, stream: tuple) -> tuple[list[list[int]], tuple]:
        """One frame per stream, x_t (B, F) -> (the labels each stream emits at this frame,
        the new stream state): the encoder and the prediction network both step."""
        encoder_state, decoder = stream
        h_t, encoder_state = self.encoder.step(x_t, encoder_state)
        out: list[list[int]] = [[] for _ in range(x_t.shape[0])]
        active = torch.ones(x_t.shape[0], dtype=torch.bool, device=x_t.device)
        decoder = self._read_frame(self.joiner.encoder_proj(h_t), decoder, active, out)
        return out, (encoder_state, decoder)

    def prediction_start(self, batch_size: int, like: torch.Tensor) -> tuple[list, torch.Tensor]:
        """The decoder of ``batch_size`` rows after the start symbol: (the prediction
        network's state, W_p g_0 (B, W)), on the device and in the dtype of ``like``."""
        start = torch.full((batch_size,), BLANK, dtype=torch.long, device=like.device)
        state = self.prediction.init_state(batch_size, like.device, like.dtype)
        return self.prediction_step(start, state)

    def prediction_step(self, labels: torch.Tensor, state: list) -> tuple[list, torch.Tensor]:
        """One label per row (B,) into the prediction network: (its new state, W_p g (B, W))."""
        g, state = self.prediction.step(self.embed_label(labels), state)
        return state, self.joiner.prediction_proj(g)

    def _read_frame(
        self,
        encoded_t: torch.Tensor,
        decoder: tuple[list, torch.Tensor],
        active: torch.Tensor,
        out: list[list[int]],
    ) -> tuple[list, torch.Tensor]:
        """Emit labels at one frame (projected encoder output (B, W)) for the ``active``
        rows until each gives a blank or reaches the cap; append them to ``out``."""
        for _ in range(self.max_symbols_per_frame):
            best = self.joiner(encoded_t, decoder[1]).argmax(dim=-1)
            emit = active & (best != BLANK)
            if not bool(emit.any()):
                break
            for row in emit.nonzero().flatten().tolist():
                out[row].append(int(best[row]))
            decoder = carry(emit, self.prediction_step(best, decoder[0]), decoder)
            active = emit
        return decoder
