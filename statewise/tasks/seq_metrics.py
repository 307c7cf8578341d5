"""Metrics for sequence recognition and labelling, computed over a corpus.

Recognition (outputs of any length):

- ``edit_distance(ref, hyp)``: the Levenshtein distance, the fewest insertions, deletions
  and substitutions of single items that turn hyp into ref (items: any hashable values),
  by the dynamic programme d[i][j] = min(d[i-1][j] + 1, d[i][j-1] + 1,
  d[i-1][j-1] + [ref_i != hyp_j]).
- ``character_error_rate``: corpus level, sum of edit distances / sum of reference lengths
  (so long references weigh more; not the mean of per-sequence rates), over the characters
  of strings or the items of label sequences. It exceeds 1 when the hypotheses hold many
  insertions. ``word_error_rate``: the same over words, strings split on whitespace.

Labelling (one output per input token):

- ``token_accuracy``: correct tokens / all tokens, over the corpus.
- ``exact_match``: the fraction of sequences predicted without a single error.
- ``span_f1``: precision, recall and F1 of spans, corpus level; a predicted span counts
  only when its start, end and type all equal a reference span's. ``scheme`` says what a
  span is:

  - "runs": a maximal run of one label other than ``outside`` (plain category tags, such
    as a character's token category);
  - "bio": B-X starts a span of type X, I-X continues it; an I-X that does not follow a
    B-X or I-X starts a span too (conlleval's reading of a stray I-);
  - "bioes": also E-X (the last token of a span) and S-X (a one-token span); a span starts
    at B-X or S-X, or at I-X / E-X that does not continue a span of type X, and ends at E-X,
    S-X, or before any tag that does not continue it.

  When a side has no spans its precision (or recall) is 1.0 if the other side has none
  either, else 0.0; F1 is 0.0 when precision + recall is 0.

Every function takes a sequence of references and one of hypotheses (or predictions), one
item sequence per utterance; a bare string in their place is refused (it would be read as
a corpus of one-character utterances). Tensors and arrays are read with ``tolist()``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import NamedTuple

from statewise.errors import ArgumentError, ArgumentTypeError

SCHEMES = ("runs", "bio", "bioes")
_PREFIXES = {"bio": ("B", "I"), "bioes": ("B", "I", "E", "S")}


class SpanScores(NamedTuple):
    """Span-level scores: precision, recall, F1, and the counts they come from."""

    precision: float
    recall: float
    f1: float
    correct: int
    n_reference: int
    n_predicted: int


class Span(NamedTuple):
    """Tokens start .. end - 1 of a sequence, of type ``label``."""

    start: int
    end: int
    label: Hashable


def _items(sequence: object, name: str) -> list:
    """One utterance's items as a list (tensors and arrays through tolist())."""
    if hasattr(sequence, "tolist") and not isinstance(sequence, str):
        sequence = sequence.tolist()
    if not isinstance(sequence, (str, Sequence)):
        raise ArgumentTypeError(
            f"{name} must be a sequence of items, got {type(sequence).__name__}"
        )
    return list(sequence)


def _corpus(references: object, hypotheses: object, names: tuple[str, str]) -> list[tuple]:
    """The (reference, hypothesis) item lists of a corpus, checked to pair up."""
    for name, value in zip(names, (references, hypotheses)):
        if isinstance(value, str):
            raise ArgumentTypeError(
                f"{name} must be a list of sequences (one per utterance), got a str; "
                "wrap a single one in a list"
            )
        if not isinstance(value, Sequence) and not hasattr(value, "tolist"):
            raise ArgumentTypeError(
                f"{name} must be a list of sequences, got {type(value).__name__}"
            )
    if len(references) != len(hypotheses):
        raise ArgumentError(
            f"{names[0]} and {names[1]} must have the same length, got {len(references)} "
            f"and {len(hypotheses)}"
        )
    return [
        (_items(r, f"{names[0]}[{i}]"), _items(h, f"{names[1]}[{i}]"))
        for i, (r, h) in enumerate(zip(references, hypotheses))
    ]


def edit_distance(reference: Sequence[Hashable], hypothesis: Sequence[Hashable]) -> int:
    """The Levenshtein distance between two sequences (unit costs), O(len * len) time."""
    ref, hyp = _items(reference, "reference"), _items(hypothesis, "hypothesis")
    previous = list(range(len(hyp) + 1))  # row i - 1 of d; d[0][j] = j
    for i, r in enumerate(ref, start=1):
        current = [i]
        for j, h in enumerate(hyp, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def character_error_rate(references: Sequence[Sequence], hypotheses: Sequence[Sequence]) -> float:
    """Corpus CER: sum of edit distances / sum of reference lengths, over the characters of
    strings or the items of label sequences."""
    pairs = _corpus(references, hypotheses, ("references", "hypotheses"))
    total = sum(len(r) for r, _ in pairs)
    if total == 0:
        raise ArgumentError("references hold no items: the error rate is undefined")
    return sum(edit_distance(r, h) for r, h in pairs) / total


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER: word edits / reference words, words split on whitespace."""
    for name, texts in (("references", references), ("hypotheses", hypotheses)):
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ArgumentTypeError(f"{name} must be a list of strings")
    return character_error_rate([r.split() for r in references], [h.split() for h in hypotheses])


def _aligned(references: object, predictions: object) -> list[tuple]:
    """Pairs of equally long tag sequences; the corpus must hold at least one token."""
    pairs = _corpus(references, predictions, ("references", "predictions"))
    for i, (r, p) in enumerate(pairs):
        if len(r) != len(p):
            raise ArgumentError(
                f"predictions[{i}] has {len(p)} tags but references[{i}] has {len(r)}"
            )
    return pairs


def token_accuracy(references: Sequence[Sequence], predictions: Sequence[Sequence]) -> float:
    """Correct tags / all tags over the corpus."""
    pairs = _aligned(references, predictions)
    total = sum(len(r) for r, _ in pairs)
    if total == 0:
        raise ArgumentError("references hold no tokens: the accuracy is undefined")
    return sum(a == b for r, p in pairs for a, b in zip(r, p)) / total


def exact_match(references: Sequence[Sequence], predictions: Sequence[Sequence]) -> float:
    """The fraction of sequences whose prediction equals the reference exactly."""
    pairs = _corpus(references, predictions, ("references", "predictions"))
    if not pairs:
        raise ArgumentError("references is empty: exact match is undefined")
    return sum(r == p for r, p in pairs) / len(pairs)


def _parse(tag: object, scheme: str, outside: Hashable) -> tuple[str, object]:
    """(prefix, type) of a BIO/BIOES tag; ("O", None) for the outside tag."""
    if tag == outside:
        return "O", None
    prefix, _, kind = tag.partition("-") if isinstance(tag, str) else ("", "", "")
    if prefix not in _PREFIXES[scheme] or not kind:
        allowed = "/".join(_PREFIXES[scheme])
        raise ArgumentError(f"tag {tag!r} is not {outside!r} or {allowed}-TYPE ({scheme} scheme)")
    return prefix, kind


def spans(tags: Sequence[Hashable], scheme: str = "runs", outside: Hashable = "O") -> list[Span]:
    """The spans of one tag sequence under ``scheme`` (see the module docstring)."""
    if scheme not in SCHEMES:
        raise ArgumentError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    tags = _items(tags, "tags")
    found: list[Span] = []
    start, kind = None, None  # the open span
    for i, tag in enumerate(tags):
        if scheme == "runs":
            prefix, tag_kind = ("O", None) if tag == outside else ("I", tag)
            continues = start is not None and tag_kind == kind
        else:
            prefix, tag_kind = _parse(tag, scheme, outside)
            continues = start is not None and tag_kind == kind and prefix in ("I", "E")
        if not continues:
            if start is not None:
                found.append(Span(start, i, kind))
            start, kind = (None, None) if prefix == "O" else (i, tag_kind)
        if prefix in ("E", "S"):
            found.append(Span(start, i + 1, kind))
            start, kind = None, None
    if start is not None:
        found.append(Span(start, len(tags), kind))
    return found


def _ratio(numerator: int, denominator: int, other_side: int) -> float:
    if denominator:
        return numerator / denominator
    return 1.0 if other_side == 0 else 0.0


def span_f1(
    references: Sequence[Sequence],
    predictions: Sequence[Sequence],
    scheme: str = "runs",
    outside: Hashable = "O",
) -> SpanScores:
    """Span precision, recall and F1 over the corpus (exact start, end and type)."""
    pairs = _aligned(references, predictions)
    correct = n_reference = n_predicted = 0
    for r, p in pairs:
        reference, predicted = set(spans(r, scheme, outside)), set(spans(p, scheme, outside))
        correct += len(reference & predicted)
        n_reference += len(reference)
        n_predicted += len(predicted)
    precision = _ratio(correct, n_predicted, n_reference)
    recall = _ratio(correct, n_reference, n_predicted)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return SpanScores(precision, recall, f1, correct, n_reference, n_predicted)
