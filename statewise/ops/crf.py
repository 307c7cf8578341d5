"""The linear-chain conditional random field (Lafferty et al. 2001) over L tags, as in the
BiLSTM-CRF tagger (Huang et al. 2015; Lample et al. 2016).

A sequence of T tokens has emission scores e_t(j) (B, T, L) from the network; the CRF adds
transition scores A[i, j] (tag i followed by tag j), start scores s_j and end scores f_j.
A tag path y_1..y_T scores

    score(y) = s_{y_1} + sum_t e_t(y_t) + sum_{t>1} A[y_{t-1}, y_t] + f_{y_T}

and P(y|x) = exp(score(y)) / Z with Z summed over all L^T paths, computed by the forward
algorithm in log space:

    alpha_1(j) = s_j + e_1(j)
    alpha_t(j) = logsumexp_i(alpha_{t-1}(i) + A[i, j]) + e_t(j)
    log Z      = logsumexp_j(alpha_T(j) + f_j)

Viterbi decoding is the same recursion with max for logsumexp, keeping the argmax i of each
step (the back-pointers) to read the best path backwards from argmax_j(delta_T(j) + f_j).

``mask`` (B, T) bool marks the real tokens of right-padded rows (True first, then False;
None = all real); every row needs at least one real token. At a padded step the forward
variables are carried through unchanged, so a row's results are those of its real tokens
alone. The negative log-likelihood -log P(y|x) = log Z - score(y) is averaged over the
sequences ("mean"), summed ("sum") or returned per sequence ("none"). Gradients come from
autograd through logsumexp. Under bfloat16/float16 the recursion runs in float32.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from statewise.errors import ArgumentError, ArgumentTypeError
from statewise.ops.checks import REDUCTIONS, check_finite, check_int_tensor
from statewise.ops.precision import LOW_PRECISION, float32_recurrence


class CRFParameters(NamedTuple):
    """transitions (L, L): [i, j] scores tag i followed by tag j; start and end (L,)."""

    transitions: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor


class ViterbiPaths(NamedTuple):
    """The best tag paths: ``tags`` (B, T) with -1 after each row's length, their scores
    (B,), and ``lengths`` (B,)."""

    tags: torch.Tensor
    scores: torch.Tensor
    lengths: torch.Tensor

    def as_lists(self) -> list[list[int]]:
        """One list of tags per row, padding dropped."""
        return [row[:n] for row, n in zip(self.tags.tolist(), self.lengths.tolist())]


def _floating(name: str, value: object, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise ArgumentTypeError(f"{name} must be a floating tensor, got {value.dtype}")
    if tuple(value.shape) != shape:
        raise ArgumentError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
    check_finite(name, value)
    return value


def _checked(
    emissions: object, params: CRFParameters, mask: object
) -> tuple[torch.Tensor, CRFParameters, torch.Tensor]:
    """(emissions, parameters) in one floating dtype (float32 at least), and the lengths."""
    if not isinstance(emissions, torch.Tensor):
        raise ArgumentTypeError(f"emissions must be a torch.Tensor, got {type(emissions).__name__}")
    if emissions.dim() != 3 or 0 in emissions.shape:
        raise ArgumentError(
            "emissions must be a non-empty (batch, seq_len, n_tags) tensor, got "
            f"{tuple(emissions.shape)}"
        )
    batch, seq_len, n_tags = emissions.shape
    _floating("emissions", emissions, (batch, seq_len, n_tags))
    names = ("transitions", "start", "end")
    shapes = ((n_tags, n_tags), (n_tags,), (n_tags,))
    params = CRFParameters(*(_floating(n, p, s) for n, p, s in zip(names, params, shapes)))
    for name, p in zip(names, params):
        if p.device != emissions.device:
            raise ArgumentError(f"{name} is on {p.device}, emissions are on {emissions.device}")
    dtype = emissions.dtype
    for p in params:
        dtype = torch.promote_types(dtype, p.dtype)
    dtype = torch.float32 if dtype in LOW_PRECISION else dtype
    params = CRFParameters(*(p.to(dtype) for p in params))
    return emissions.to(dtype), params, _lengths(mask, batch, seq_len, emissions.device)


def _lengths(mask: object, batch: int, seq_len: int, device: torch.device) -> torch.Tensor:
    """Real tokens per row from a right-padding mask (B, T) bool; all T when None."""
    if mask is None:
        return torch.full((batch,), seq_len, dtype=torch.long, device=device)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        what = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ArgumentTypeError(f"mask must be a bool tensor (True = real token), got {what}")
    if tuple(mask.shape) != (batch, seq_len):
        raise ArgumentError(f"mask must have shape {(batch, seq_len)}, got {tuple(mask.shape)}")
    if mask.device != device:
        raise ArgumentError(f"mask is on {mask.device}, emissions are on {device}")
    lengths = mask.sum(1)
    if bool((lengths == 0).any()):
        raise ArgumentError("mask: every row needs at least one real token")
    if not torch.equal(mask, torch.arange(seq_len, device=device) < lengths[:, None]):
        raise ArgumentError("mask must be right padding: each row's True entries come first")
    return lengths


def _recursion(
    emissions: torch.Tensor, params: CRFParameters, lengths: torch.Tensor, viterbi: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The final forward (or Viterbi) variables (B, L) plus end scores, and for Viterbi the
    back-pointers: one (B, L) per step t = 1..T-1, the best previous tag of each tag."""
    alpha = params.start + emissions[:, 0]
    pointers = []
    for t in range(1, emissions.shape[1]):
        scores = alpha.unsqueeze(2) + params.transitions  # (B, from, to)
        if viterbi:
            best, pointer = scores.max(dim=1)
            pointers.append(pointer)
        else:
            best = torch.logsumexp(scores, dim=1)
        alpha = torch.where((t < lengths)[:, None], best + emissions[:, t], alpha)
    return alpha + params.end, pointers


@float32_recurrence
def crf_log_partition(
    emissions: torch.Tensor,
    transitions: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """log Z (B,): the log-sum over all tag paths of each row's exp(score), by the forward
    algorithm. emissions (B, T, L); transitions (L, L); start, end (L,); mask (B, T)."""
    emissions, params, lengths = _checked(emissions, CRFParameters(transitions, start, end), mask)
    final, _ = _recursion(emissions, params, lengths, viterbi=False)
    return torch.logsumexp(final, dim=1)


def _path_score(
    emissions: torch.Tensor, params: CRFParameters, tags: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    batch, seq_len, _ = emissions.shape
    real = torch.arange(seq_len, device=tags.device) < lengths[:, None]
    tags = tags.masked_fill(~real, 0)
    emitted = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)
    moved = params.transitions[tags[:, :-1], tags[:, 1:]]
    last = tags.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1)
    return (
        params.start[tags[:, 0]]
        + (emitted * real).sum(1)
        + (moved * real[:, 1:]).sum(1)
        + params.end[last]
    )


def _tags(tags: object, emissions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """tags (B, T) int64, real entries in [0, L); padded entries may hold anything."""
    batch, seq_len, n_tags = emissions.shape
    tags = check_int_tensor("tags", tags, (batch, seq_len), emissions.device)
    real = tags[torch.arange(seq_len, device=tags.device) < lengths[:, None]]
    if int(real.min()) < 0 or int(real.max()) >= n_tags:
        raise ArgumentError(f"tags must be in [0, {n_tags}) at the real tokens")
    return tags


@float32_recurrence
def crf_score(
    emissions: torch.Tensor,
    tags: torch.Tensor,
    transitions: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """score(y) (B,) of the tag paths ``tags`` (B, T) (integer; padding ignored)."""
    emissions, params, lengths = _checked(emissions, CRFParameters(transitions, start, end), mask)
    return _path_score(emissions, params, _tags(tags, emissions, lengths), lengths)


@float32_recurrence
def crf_nll(
    emissions: torch.Tensor,
    tags: torch.Tensor,
    transitions: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """-log P(tags | x) = log Z - score(tags): mean over sequences, sum, or (B,) ("none")."""
    if reduction not in REDUCTIONS:
        raise ArgumentError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    emissions, params, lengths = _checked(emissions, CRFParameters(transitions, start, end), mask)
    tags = _tags(tags, emissions, lengths)
    final, _ = _recursion(emissions, params, lengths, viterbi=False)
    losses = torch.logsumexp(final, dim=1) - _path_score(emissions, params, tags, lengths)
    if reduction == "mean":
        return losses.mean()
    return losses.sum() if reduction == "sum" else losses


@torch.no_grad()
@float32_recurrence
def crf_viterbi(
    emissions: torch.Tensor,
    transitions: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> ViterbiPaths:
    """The highest-scoring tag path of each row and its score (ties: the lowest tag index
    at the end, and torch.max's choice at each back-pointer)."""
    emissions, params, lengths = _checked(emissions, CRFParameters(transitions, start, end), mask)
    final, pointers = _recursion(emissions, params, lengths, viterbi=True)
    scores, last = final.max(dim=1)
    batch, seq_len, _ = emissions.shape
    tags = torch.full((batch, seq_len), -1, dtype=torch.long, device=emissions.device)
    tags.scatter_(1, (lengths - 1).unsqueeze(1), last.unsqueeze(1))
    for t in range(seq_len - 1, 0, -1):
        inside = t < lengths
        previous = pointers[t - 1].gather(1, tags[:, t].clamp(min=0).unsqueeze(1)).squeeze(1)
        tags[:, t - 1] = torch.where(inside, previous, tags[:, t - 1])
    return ViterbiPaths(tags, scores, lengths)


class CRF(nn.Module):
    """The CRF's parameters (``transitions`` (L, L), ``start``, ``end`` (L,)), initialised
    to zero: an untrained CRF is then a per-token softmax over the emissions, and training
    moves the transition scores away from zero only as far as the data asks."""

    def __init__(self, n_tags: int) -> None:
        super().__init__()
        if isinstance(n_tags, bool) or not isinstance(n_tags, int) or n_tags <= 0:
            raise ArgumentError(f"n_tags must be a positive int, got {n_tags!r}")
        self.n_tags = n_tags
        self.transitions = nn.Parameter(torch.zeros(n_tags, n_tags))
        self.start = nn.Parameter(torch.zeros(n_tags))
        self.end = nn.Parameter(torch.zeros(n_tags))

    def extra_repr(self) -> str:
        return f"n_tags={self.n_tags}"

    def forward(
        self,
        emissions: torch.Tensor,
        tags: torch.Tensor,
        mask: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """The negative log-likelihood of ``tags`` (see :func:`crf_nll`)."""
        return crf_nll(emissions, tags, *self._params(), mask=mask, reduction=reduction)

    def log_partition(
        self, emissions: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log Z per row (see :func:`crf_log_partition`)."""
        return crf_log_partition(emissions, *self._params(), mask=mask)

    def decode(self, emissions: torch.Tensor, mask: torch.Tensor | None = None) -> ViterbiPaths:
        """The best tag paths (see :func:`crf_viterbi`)."""
        return crf_viterbi(emissions, *self._params(), mask=mask)

    def _params(self) -> CRFParameters:
        return CRFParameters(self.transitions, self.start, self.end)
