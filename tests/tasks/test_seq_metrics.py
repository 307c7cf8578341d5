"""statewise.tasks.seq_metrics: edit distance against a breadth-first search over single
edits, error rates, accuracies and span F1 on hand-worked examples."""

from __future__ import annotations

import itertools
from collections import deque

import pytest
import torch

from statewise.errors import ArgumentError, ArgumentTypeError
from statewise.tasks.seq_metrics import (
    Span,
    character_error_rate,
    edit_distance,
    exact_match,
    span_f1,
    spans,
    token_accuracy,
    word_error_rate,
)


def bfs_distances(source: str, alphabet: str, max_len: int) -> dict[str, int]:
    """Fewest single insertions, deletions and substitutions from ``source`` to every string
    over ``alphabet`` of length <= max_len, by breadth-first search (a shortest edit path
    between two strings never passes a string longer than both)."""
    distance = {source: 0}
    queue = deque([source])
    while queue:
        s = queue.popleft()
        neighbours = {s[:i] + s[i + 1 :] for i in range(len(s))}
        neighbours |= {s[:i] + c + s[i + 1 :] for i in range(len(s)) for c in alphabet}
        if len(s) < max_len:
            neighbours |= {s[:i] + c + s[i:] for i in range(len(s) + 1) for c in alphabet}
        for n in neighbours - distance.keys():
            distance[n] = distance[s] + 1
            queue.append(n)
    return distance


def test_edit_distance_equals_breadth_first_search_over_edits():
    alphabet, max_len = "abc", 3
    strings = [
        "".join(p) for k in range(max_len + 1) for p in itertools.product(alphabet, repeat=k)
    ]
    for source in strings:
        expected = bfs_distances(source, alphabet, max_len)
        for target in strings:
            assert edit_distance(target, source) == expected[target]
            assert edit_distance(list(source), tuple(target)) == expected[target]


@pytest.mark.parametrize(
    "reference, hypothesis, distance",
    [
        ("kitten", "sitting", 3),
        ("flaw", "lawn", 2),
        ("", "abc", 3),
        ("abc", "", 3),
        ("same", "same", 0),
        ([1, 2, 3, 4], [1, 3, 4, 4, 5], 3),  # keep 1, delete 2, keep 3 4, insert 4 5
        (("the", "cat"), ("a", "cat", "sat"), 2),
    ],
)
def test_edit_distance_on_hand_cases(reference, hypothesis, distance):
    assert edit_distance(reference, hypothesis) == distance


def test_error_rates_are_corpus_level():
    # edits 1 ("abc" -> "abd") and 2 (delete "de") over 5 reference characters; the mean of
    # the per-sequence rates would be (1/3 + 1) / 2
    assert character_error_rate(["abc", "de"], ["abd", ""]) == pytest.approx(3 / 5)
    assert character_error_rate([[1, 2, 3]], [torch.tensor([1, 3])]) == pytest.approx(1 / 3)
    assert character_error_rate(["a"], ["bbb"]) == pytest.approx(3.0)  # insertions: > 1
    # "sat" -> "sit" and a deleted "the" (2 of 6 words), then 1 insertion over 2 words
    refs = ["the cat sat on the mat", "hello world"]
    hyps = ["the cat sit on mat", "hello  big\nworld"]
    assert word_error_rate(refs, hyps) == pytest.approx(3 / 8)


def test_token_accuracy_and_exact_match():
    refs = [["a", "b", "c"], ["d"], ["e", "f"]]
    preds = [["a", "x", "c"], ["d"], ["e", "f"]]
    assert token_accuracy(refs, preds) == pytest.approx(5 / 6)
    assert exact_match(refs, preds) == pytest.approx(2 / 3)
    assert exact_match([[1, 2]], [torch.tensor([1, 2])]) == 1.0


@pytest.mark.parametrize(
    "tags, scheme, expected",
    [
        (
            ["name", "name", "O", "op", "name", "name"],
            "runs",
            [(0, 2, "name"), (3, 4, "op"), (4, 6, "name")],
        ),
        (
            ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"],
            "bio",
            [(0, 2, "PER"), (3, 4, "LOC"), (4, 6, "LOC")],
        ),
        # a stray I- starts a span; I- of another type ends one and starts the next
        (
            ["I-PER", "I-PER", "I-LOC", "O", "I-LOC"],
            "bio",
            [(0, 2, "PER"), (2, 3, "LOC"), (4, 5, "LOC")],
        ),
        (
            ["B-PER", "E-PER", "S-LOC", "I-LOC", "E-LOC", "O", "E-PER", "B-X"],
            "bioes",
            [(0, 2, "PER"), (2, 3, "LOC"), (3, 5, "LOC"), (6, 7, "PER"), (7, 8, "X")],
        ),
        (
            ["S-A", "S-A", "B-A", "I-A", "S-A"],
            "bioes",
            [(0, 1, "A"), (1, 2, "A"), (2, 4, "A"), (4, 5, "A")],
        ),
        (["O", "O"], "bio", []),
    ],
)
def test_spans_on_hand_cases(tags, scheme, expected):
    assert spans(tags, scheme) == [Span(*s) for s in expected]


def test_runs_with_another_outside_label():
    expected = [Span(0, 2, 3), Span(3, 4, 3), Span(4, 5, 1)]
    assert spans([3, 3, 0, 3, 1], "runs", outside=0) == expected
    assert spans([3, 3, 0, 3, 1], "runs", outside=None)[1] == Span(2, 3, 0)


def test_runs_equal_groups_of_equal_labels():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        tags = torch.randint(0, 3, (int(torch.randint(0, 12, (1,), generator=g)),), generator=g)
        position, expected = 0, []
        for label, group in itertools.groupby(tags.tolist()):
            size = len(list(group))
            if label != 0:
                expected.append(Span(position, position + size, label))
            position += size
        assert spans(tags, "runs", outside=0) == expected


def test_span_f1_counts_exact_matches_over_the_corpus():
    refs = [["B-A", "I-A", "O", "B-B"], ["B-A", "O", "O", "O"]]
    preds = [["B-A", "I-A", "O", "O"], ["B-A", "I-A", "O", "O"]]  # 1 exact, 1 too long
    scores = span_f1(refs, preds, scheme="bio")
    assert (scores.correct, scores.n_reference, scores.n_predicted) == (1, 3, 2)
    assert scores.precision == pytest.approx(1 / 2) and scores.recall == pytest.approx(1 / 3)
    assert scores.f1 == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    # "runs" on the same tags: B-A I-A are two different labels, so other spans
    assert span_f1(refs, preds, scheme="runs").n_reference == 4


def test_span_f1_when_a_side_has_no_spans():
    assert span_f1([["O", "O"]], [["O", "O"]], "bio")[:3] == (1.0, 1.0, 1.0)
    assert span_f1([["B-A", "O"]], [["O", "O"]], "bio")[:3] == (0.0, 0.0, 0.0)
    assert span_f1([["O", "O"]], [["B-A", "O"]], "bio")[:3] == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: character_error_rate("abc", "abd"), ArgumentTypeError, "references"),
        (lambda: character_error_rate(["abc"], ["a", "b"]), ArgumentError, "same length"),
        (lambda: character_error_rate([""], ["a"]), ArgumentError, "undefined"),
        (lambda: character_error_rate([3], ["a"]), ArgumentTypeError, r"references\[0\]"),
        (lambda: word_error_rate([["a"]], ["a"]), ArgumentTypeError, "references"),
        (lambda: token_accuracy([["a", "b"]], [["a"]]), ArgumentError, r"predictions\[0\]"),
        (lambda: token_accuracy([[]], [[]]), ArgumentError, "undefined"),
        (lambda: exact_match([], []), ArgumentError, "empty"),
        (lambda: span_f1([["X-A"]], [["O"]], "bio"), ArgumentError, "X-A"),
        (lambda: span_f1([["E-A"]], [["O"]], "bio"), ArgumentError, "E-A"),
        (lambda: span_f1([["B-"]], [["O"]], "bioes"), ArgumentError, "B-"),
        (lambda: span_f1([["O"]], [["O"]], "iob2"), ArgumentError, "scheme"),
    ],
)
def test_bad_input_raises_clear_errors(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_inputs_are_not_modified():
    refs, preds = [["B-A", "I-A"], ["O"]], [["B-A", "O"], ["O"]]
    copies = [list(r) for r in refs], [list(p) for p in preds]
    span_f1(refs, preds, "bio")
    token_accuracy(refs, preds)
    character_error_rate(refs, preds)
    assert (refs, preds) == copies
