"""The SequenceTagger estimator: a bidirectional tagger learns a rule that reads the right
neighbour (a causal one cannot), the CRF beats the softmax on BIO spans whose type shows
only at their end, predictions keep the input's form, saving round-trips, bad input is
refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from statewise import NotFittedError
from statewise.errors import ArgumentError, ArgumentTypeError, CheckpointError
from statewise.estimators.tag import SequenceTagger
from statewise.tasks.seq_metrics import span_f1, token_accuracy

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(d_model=16, mlp_ratio=0, lr=1e-2)
N_TOKENS = 6
BIO = ("O", "B-P", "I-P", "B-L", "I-L")


def neighbour_rule(n: int, seed: int, length: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Tokens 0..5; the tag of token t is (x_t + x_{t+1}) mod 3, x_T = 0 past the end."""
    x = np.random.default_rng(seed).integers(0, N_TOKENS, (n, length))
    following = np.concatenate([x[:, 1:], np.zeros((n, 1), x.dtype)], axis=1)
    return x, (x + following) % 3


def typed_spans(n: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """BIO tags (``BIO``) over sequences of 4-6 groups: 0-2 filler tokens (0, tag O), then
    a span of 0-3 body tokens (1) closed by its type marker (2 = P, 3 = L). Only the marker
    shows the span's type, so a causal tagger cannot know it at the span's first tokens."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(n):
        x, y = [], []
        for _ in range(rng.integers(4, 7)):
            fillers = int(rng.integers(0, 3))
            kind, body = int(rng.integers(0, 2)), int(rng.integers(0, 4))
            x += [0] * fillers + [1] * body + [2 + kind]
            y += [0] * fillers + [1 + 2 * kind] + [2 + 2 * kind] * body
        xs.append(x)
        ys.append(y)
    return xs, ys


def forbidden_transitions(tags: list[list[int]]) -> int:
    """I-X tags that do not follow B-X or I-X."""
    return sum(
        1
        for row in tags
        for before, tag in zip([0] + row, row)
        if BIO[tag].startswith("I-") and BIO[before][2:] != BIO[tag][2:]
    )


@pytest.fixture(scope="module")
def neighbours():
    return neighbour_rule(500, seed=0), neighbour_rule(200, seed=1)


@pytest.fixture(scope="module")
def bidirectional_crf(neighbours):
    (x, y), _ = neighbours
    return SequenceTagger("lstm", **SMALL).fit(x, y, max_steps=200, progress=False)


def test_a_bidirectional_tagger_reads_the_right_neighbour_a_causal_one_cannot(
    bidirectional_crf, neighbours
):
    (x, y), (xt, yt) = neighbours
    assert bidirectional_crf.evaluate(xt, yt)["token_accuracy"] > 0.97
    causal = SequenceTagger("lstm", bidirectional=False, crf=False, **SMALL)
    causal.fit(x, y, max_steps=200, progress=False)
    # x_{t+1} is uniform and unseen: 1/3 of the tokens (plus the last ones) is what's left
    assert causal.evaluate(xt, yt)["token_accuracy"] < 0.5


def test_the_crf_beats_the_softmax_on_spans_typed_at_their_end():
    (x, y), (xt, yt) = typed_spans(500, seed=0), typed_spans(200, seed=1)
    scores, predictions = {}, {}
    for crf in (True, False):
        tagger = SequenceTagger("lstm", bidirectional=False, crf=crf, **SMALL)
        tagger.fit(x, y, max_steps=200, progress=False)
        scores[crf] = tagger.evaluate(xt, yt, scheme="bio", tag_names=BIO)
        predictions[crf] = tagger.predict(xt)
    assert scores[True]["span_f1"] > 0.95 and scores[False]["span_f1"] < 0.7
    assert scores[True]["token_accuracy"] > scores[False]["token_accuracy"]
    assert forbidden_transitions(predictions[True]) == 0
    assert forbidden_transitions(predictions[False]) > 0


def test_predict_answers_in_the_form_of_x_and_a_padded_batch_equals_each_row(
    bidirectional_crf, neighbours
):
    _, (xt, yt) = neighbours
    rows = [list(xt[i, : 5 + i]) for i in range(8)]
    as_lists = bidirectional_crf.predict(rows)
    assert [len(r) for r in as_lists] == [5 + i for i in range(8)]
    assert as_lists == [bidirectional_crf.predict([r])[0] for r in rows]
    padded = np.full((8, 12), N_TOKENS + 50)  # padding is ignored, however out of range
    for i, r in enumerate(rows):
        padded[i, : len(r)] = r
    lengths = np.arange(5, 13)
    array = bidirectional_crf.predict(padded, lengths=lengths)
    assert isinstance(array, np.ndarray) and array.shape == (8, 12) and array.dtype == np.int64
    assert [list(array[i, :n]) for i, n in enumerate(lengths)] == as_lists
    assert (array[np.arange(12) >= lengths[:, None]] == -1).all()
    tensor = bidirectional_crf.predict(torch.from_numpy(padded), lengths=torch.from_numpy(lengths))
    assert isinstance(tensor, torch.Tensor) and torch.equal(tensor, torch.from_numpy(array))


def test_evaluate_scores_as_the_metrics_say(bidirectional_crf, neighbours):
    _, (xt, yt) = neighbours
    got = bidirectional_crf.predict(list(xt[:50]))
    want = [list(r) for r in yt[:50]]
    spans = span_f1(want, got, "runs", 0)
    scores = bidirectional_crf.evaluate(xt[:50], yt[:50])
    assert scores["token_accuracy"] == token_accuracy(want, got)
    assert (scores["span_precision"], scores["span_recall"], scores["span_f1"]) == spans[:3]
    with_names = bidirectional_crf.evaluate(xt[:50], yt[:50], outside=1, tag_names=["a", "b", "c"])
    assert with_names["span_f1"] == span_f1(want, got, "runs", 1).f1


def test_real_valued_features_are_tagged_too():
    rng = np.random.default_rng(0)
    x = [rng.standard_normal((n, 3)).astype(np.float32) for n in (4, 7, 5, 6)]
    y = [(row[:, 0] > 0).astype(int).tolist() for row in x]
    tagger = SequenceTagger("gru", crf=False, **SMALL).fit(x, y, max_steps=2, progress=False)
    assert tagger.input_dim == 3 and tagger.vocab_size is None
    assert [len(r) for r in tagger.predict(x)] == [4, 7, 5, 6]
    with pytest.raises(ArgumentError, match="3 features per frame"):
        tagger.predict([np.zeros((4, 2), np.float32)])


def test_save_and_load_give_the_same_tags(bidirectional_crf, neighbours, tmp_path):
    _, (xt, _) = neighbours
    bidirectional_crf.save(tmp_path / "t")
    loaded = SequenceTagger.load(tmp_path / "t")
    assert np.array_equal(loaded.predict(xt[:40]), bidirectional_crf.predict(xt[:40]))
    assert loaded.options == bidirectional_crf.options
    with pytest.raises(CheckpointError):
        SequenceTagger.load(tmp_path)


def test_inputs_are_not_modified(neighbours):
    (x, y), _ = neighbours
    x_copy, y_copy = x[:40].copy(), y[:40].copy()
    tagger = SequenceTagger("gru", **SMALL).fit(x_copy, y_copy, max_steps=1, progress=False)
    tagger.predict(x_copy)
    tagger.evaluate(x_copy, y_copy)
    assert np.array_equal(x_copy, x[:40]) and np.array_equal(y_copy, y[:40])


@pytest.mark.parametrize(
    "x, y, kwargs, error, words",
    [
        ([[1, 2, 3]], [[0, 1]], {}, ArgumentError, r"y\[0\] has 2 tags, x\[0\] has 3 tokens"),
        ([[1, 2]], [[0, 1], [1, 0]], {}, ArgumentError, "y has 2 sequences, x has 1"),
        ([[1, 2]], [[0, -1]], {}, ArgumentError, r"y tags must lie in \[0, 2\)"),
        ([[1, 2]], [[0, 2]], {"n_tags": 2}, ArgumentError, r"y tags must lie in \[0, 2\)"),
        ([[1, 2]], [[0.0, 1.0]], {}, ArgumentTypeError, "integer tags"),
        ([[1, 9]], [[0, 1]], {"vocab_size": 5}, ArgumentError, r"token ids must lie in \[0, 5\)"),
        ([[1, -1]], [[0, 1]], {}, ArgumentError, "token ids must be >= 0"),
        ([[1.0, 2.0]], [[0, 1]], {"vocab_size": 5}, ArgumentTypeError, "integer token ids"),
        (np.zeros((2, 3), int), np.zeros((2, 2), int), {}, ArgumentError, "T >= the longest"),
        (np.zeros((2, 3), int), np.zeros((3, 3), int), {}, ArgumentError, "y has 3 rows, x has 2"),
        ([[1, 2]], [[0, 1]], {"val": ([[1]],)}, ArgumentError, "val must be a tuple"),
        ([[1, 2], [[3]]], [[0, 1], [0]], {}, ArgumentError, r"x\[1\] must have shape \(T,\)"),
    ],
)
def test_bad_training_input_is_refused_clearly(x, y, kwargs, error, words):
    options = {k: kwargs.pop(k) for k in ("n_tags", "vocab_size") if k in kwargs}
    tagger = SequenceTagger(**options, **SMALL)
    with pytest.raises(error, match=words):
        tagger.fit(x, y, max_steps=1, progress=False, **kwargs)
    assert tagger.model is None


def test_bad_use_is_refused_clearly(bidirectional_crf):
    fresh = SequenceTagger()
    for call in (
        lambda: fresh.predict([[1]]),
        lambda: fresh.evaluate([[1]], [[0]]),
        lambda: fresh.save("unused"),
    ):
        with pytest.raises(NotFittedError, match="call fit before"):
            call()
    x, y = [[1, 2]], [[0, 1]]
    with pytest.raises(ArgumentError, match="give tag_names"):
        bidirectional_crf.evaluate(x, y, scheme="bio")
    with pytest.raises(ArgumentError, match="scheme must be one of"):
        bidirectional_crf.evaluate(x, y, scheme="iob")
    with pytest.raises(ArgumentError, match="tag_names must hold 3 names"):
        bidirectional_crf.evaluate(x, y, tag_names=["O", "B-X"])
    with pytest.raises(ArgumentError, match=r"outside must be a tag id in \[0, 3\)"):
        bidirectional_crf.evaluate(x, y, outside=3)
    with pytest.raises(ArgumentError, match="token ids must lie"):
        bidirectional_crf.predict([[1, N_TOKENS]])
    for kwargs, words in (
        (dict(vocab_size=5, input_dim=2), "not both"),
        (dict(n_tags=1), "n_tags must be >= 2"),
        (dict(n_layers=0), "n_layers must be a positive int"),
        (dict(head="lm"), "head is set by SequenceTagger"),
        (dict(layer="no_such_layer"), "no_such_layer"),
    ):
        with pytest.raises((ArgumentError, ValueError), match=words):
            SequenceTagger(**kwargs)
    with pytest.raises(ArgumentTypeError, match="crf must be a bool"):
        SequenceTagger(crf=1)
