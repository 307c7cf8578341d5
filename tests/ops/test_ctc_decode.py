"""statewise.ops.ctc_decode: greedy decoding on hand cases, prefix beam search against the
most probable labelling found by enumerating every path, and what holds between them."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from statewise.errors import ArgumentError, ArgumentTypeError, NonFiniteError
from statewise.ops.ctc_decode import Hypothesis, ctc_beam_search, ctc_greedy_decode


def collapse(path, blank):
    """B(path): merge repeats, then drop blanks."""
    merged = [s for i, s in enumerate(path) if i == 0 or s != path[i - 1]]
    return tuple(s for s in merged if s != blank)


def labelling_log_probs(log_probs: torch.Tensor, blank: int) -> dict[tuple, float]:
    """log P(l|x) of every labelling l, summed over all V^T paths by brute force."""
    frames, vocab = log_probs.shape
    totals: dict[tuple, list[float]] = {}
    for path in itertools.product(range(vocab), repeat=frames):
        score = float(log_probs[range(frames), list(path)].sum())
        totals.setdefault(collapse(path, blank), []).append(score)
    return {l: float(torch.tensor(s, dtype=torch.float64).logsumexp(0)) for l, s in totals.items()}


def frames_from(probabilities) -> torch.Tensor:
    return torch.tensor(probabilities, dtype=torch.float64).log()


def random_log_probs(frames, vocab, seed, sharpness=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(frames, vocab, generator=g, dtype=torch.float64) * sharpness
    return logits.log_softmax(-1)


@pytest.mark.parametrize(
    "probabilities, expected",
    [
        # argmax path a a - a b b -: repeats merge, a blank separates the two a's
        (
            [[0.1, 0.8, 0.1], [0.2, 0.7, 0.1]]
            + [[0.6, 0.3, 0.1], [0.1, 0.8, 0.1]]
            + [[0.1, 0.1, 0.8], [0.2, 0.1, 0.7], [0.9, 0.05, 0.05]],
            [1, 1, 2],
        ),
        ([[0.9, 0.05, 0.05]] * 3, []),  # all blank
        ([[0.2, 0.1, 0.7]], [2]),  # one frame
    ],
)
def test_greedy_on_hand_cases(probabilities, expected):
    assert ctc_greedy_decode(frames_from(probabilities)) == expected


def test_greedy_with_another_blank_index_and_a_batch_with_lengths():
    # blank = 2: path 0 0 2 0 1 -> [0, 0, 1]; the second row stops after 2 frames -> [1]
    rows = frames_from(
        [
            [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1], [0.1, 0.8, 0.1]],
            [[0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1]],
        ]
    )
    assert ctc_greedy_decode(rows[0], blank=2) == [0, 0, 1]
    assert ctc_greedy_decode(rows, torch.tensor([5, 2]), blank=2) == [[0, 0, 1], [1]]
    assert ctc_greedy_decode(rows, blank=2) == [[0, 0, 1], [1, 0, 1, 0]]


@pytest.mark.parametrize(
    "frames, vocab, blank", [(1, 3, 0), (3, 2, 1), (4, 3, 0), (5, 3, 2), (4, 4, 0)]
)
def test_wide_beam_finds_the_most_probable_labelling(frames, vocab, blank):
    """A beam as wide as the number of prefixes prunes nothing: the search returns the
    labellings in order of their exact probability, summed over all their paths."""
    for seed in range(4):
        log_probs = random_log_probs(frames, vocab, seed=seed + 10 * frames)
        exact = labelling_log_probs(log_probs, blank)
        width = sum((vocab - 1) ** k for k in range(frames + 1))
        found = ctc_beam_search(log_probs, blank=blank, beam_width=width, n_best=3)
        ranked = sorted(exact.items(), key=lambda item: item[1], reverse=True)[:3]
        assert [tuple(h.labels) for h in found] == [l for l, _ in ranked]
        for h, (_, log_p) in zip(found, ranked):
            assert h.score == pytest.approx(log_p, rel=1e-12, abs=1e-12)


def test_beam_scores_never_exceed_the_labelling_probability():
    """Pruning only drops paths, so any beam's score is a lower bound of log P(l|x)."""
    for seed in range(30):
        log_probs = random_log_probs(5, 3, seed=seed)
        exact = labelling_log_probs(log_probs, 0)
        for width in (1, 2, 3):
            for h in ctc_beam_search(log_probs, beam_width=width, n_best=width):
                assert h.score <= exact[tuple(h.labels)] + 1e-12


def test_beam_one_and_greedy_where_they_agree_and_where_a_wider_beam_wins():
    """Two frames over {blank, a}, P(blank) = 0.6 at each: the best path is blank blank
    (0.36), and beam 1 keeps the empty prefix too (0.6 > 0.4 after frame one); but "a"
    collects a a, a -, - a = 0.64, which a beam of 2 finds."""
    log_probs = frames_from([[0.6, 0.4], [0.6, 0.4]])
    assert ctc_greedy_decode(log_probs) == []
    assert ctc_beam_search(log_probs, beam_width=1)[0] == Hypothesis(
        [], pytest.approx(math.log(0.36))
    )
    best = ctc_beam_search(log_probs, beam_width=2)[0]
    assert best.labels == [1] and best.score == pytest.approx(math.log(0.64))


def test_beam_one_equals_greedy_on_confident_frames():
    """With one symbol of probability 0.9 per frame the best path carries the prefix mass
    and beam 1 follows it: a b b - b a."""
    sure = {0: [0.9, 0.05, 0.05], 1: [0.05, 0.9, 0.05], 2: [0.05, 0.05, 0.9]}
    log_probs = frames_from([sure[s] for s in (1, 2, 2, 0, 2, 1)])
    assert ctc_greedy_decode(log_probs) == [1, 2, 2, 1]
    assert ctc_beam_search(log_probs, beam_width=1)[0].labels == [1, 2, 2, 1]


def test_length_bonus_adds_per_label_and_can_change_the_winner():
    log_probs = frames_from([[0.6, 0.4], [0.6, 0.4]])
    plain = {tuple(h.labels): h.score for h in ctc_beam_search(log_probs, beam_width=4, n_best=2)}
    bonus = ctc_beam_search(log_probs, beam_width=4, n_best=2, length_bonus=0.5)
    for h in bonus:
        assert h.score == pytest.approx(plain[tuple(h.labels)] + 0.5 * len(h.labels))
    # -1: "a" scores log 0.64 - 1 < log 0.36, so the empty labelling wins
    assert ctc_beam_search(log_probs, beam_width=4, length_bonus=-1.0)[0].labels == []


def test_batched_beam_search_equals_each_row_alone():
    batch = torch.stack([random_log_probs(6, 4, seed=s) for s in range(3)])
    lengths = torch.tensor([6, 3, 0])
    decoded = ctc_beam_search(batch, lengths, beam_width=5, n_best=2)
    for b, n in enumerate(lengths.tolist()):
        alone = ctc_beam_search(batch[b, :n], beam_width=5, n_best=2) if n else None
        assert decoded[b] == (alone if n else [Hypothesis([], 0.0)])
    assert ctc_greedy_decode(batch, lengths)[2] == []


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda lp: ctc_greedy_decode(lp[0, 0]), ArgumentError, "log_probs"),
        (lambda lp: ctc_greedy_decode(lp.long()), ArgumentTypeError, "log_probs"),
        (lambda lp: ctc_greedy_decode(lp.tolist()), ArgumentTypeError, "log_probs"),
        (lambda lp: ctc_greedy_decode(lp * float("nan")), NonFiniteError, "log_probs"),
        (lambda lp: ctc_greedy_decode(lp, blank=3), ArgumentError, "blank"),
        (lambda lp: ctc_greedy_decode(lp, torch.tensor([4, 5])), ArgumentError, "lengths"),
        (lambda lp: ctc_greedy_decode(lp, torch.tensor([4.0, 1.0])), ArgumentTypeError, "lengths"),
        (lambda lp: ctc_greedy_decode(lp[0], torch.tensor([4])), ArgumentError, "lengths"),
        (lambda lp: ctc_beam_search(lp, beam_width=0), ArgumentError, "beam_width"),
        (lambda lp: ctc_beam_search(lp, beam_width=2.0), ArgumentTypeError, "beam_width"),
        (lambda lp: ctc_beam_search(lp, beam_width=2, n_best=3), ArgumentError, "n_best"),
        (lambda lp: ctc_beam_search(lp, length_bonus=float("inf")), ArgumentError, "length_bonus"),
    ],
)
def test_bad_input_raises_clear_errors(call, error, words):
    log_probs = random_log_probs(8, 3, seed=0).reshape(2, 4, 3)
    with pytest.raises(error, match=words):
        call(log_probs)


def test_inputs_are_not_modified():
    log_probs = random_log_probs(8, 3, seed=1).reshape(2, 4, 3)
    lengths = torch.tensor([4, 2])
    copies = log_probs.clone(), lengths.clone()
    ctc_greedy_decode(log_probs, lengths)
    ctc_beam_search(log_probs, lengths)
    assert torch.equal(log_probs, copies[0]) and torch.equal(lengths, copies[1])
