"""The Recognizer estimator: CTC and the transducer learn a toy transcription, streaming
equals predicting, padded arrays equal lists, saving round-trips, bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from statewise import NotFittedError
from statewise.errors import ArgumentError, ArgumentTypeError, CheckpointError, DataError
from statewise.estimators.recognize import Recognizer, ctc_frames_needed
from statewise.tasks.seq_metrics import character_error_rate

pytestmark = pytest.mark.usefixtures("one_thread")

N_FEATURES, N_LABELS = 6, 5
SMALL = dict(d_model=32, n_layers=1, mlp_ratio=0, lr=1e-2)


def one_hot_lines(n: int, seed: int) -> tuple[list[np.ndarray], list[list[int]]]:
    """Lines of 1-4 labels in 1..4: label k is 2-3 frames of the one-hot pattern e_k, with
    1-2 frames of e_0 (silence) before each label and 0-1 after the last, plus noise
    N(0, 0.1^2). Equal neighbours are always kept apart by silence."""
    rng = np.random.default_rng(seed)
    eye = np.eye(N_FEATURES)
    lines, transcripts = [], []
    for _ in range(n):
        labels = rng.integers(1, N_LABELS, rng.integers(1, 5)).tolist()
        rows = []
        for label in labels:
            rows += [eye[0]] * rng.integers(1, 3) + [eye[label]] * rng.integers(2, 4)
        rows += [eye[0]] * rng.integers(0, 2)
        noise = 0.1 * rng.standard_normal((len(rows), N_FEATURES))
        lines.append((np.array(rows) + noise).astype(np.float32))
        transcripts.append(labels)
    return lines, transcripts


@pytest.fixture(scope="module")
def data():
    return one_hot_lines(600, seed=0), one_hot_lines(200, seed=1)


@pytest.fixture(scope="module")
def ctc(data):
    (x, y), _ = data
    return Recognizer("lstm", "ctc", **SMALL).fit(x, y, max_steps=150, progress=False)


@pytest.fixture(scope="module")
def transducer(data):
    (x, y), _ = data
    return Recognizer("lstm", "transducer", **SMALL).fit(x, y, max_steps=300, progress=False)


def test_ctc_learns_one_hot_label_frames_greedy_and_beam(ctc, data):
    _, (x, y) = data
    greedy = ctc.evaluate(x, y)
    assert greedy["cer"] < 0.05 and greedy["exact_match"] > 0.9
    assert ctc.evaluate(x, y, beam=4)["cer"] < 0.05


def test_transducer_learns_one_hot_label_frames(transducer, data):
    _, (x, y) = data
    scores = transducer.evaluate(x, y)
    assert scores["cer"] < 0.05 and scores["exact_match"] > 0.9


def test_streaming_frame_by_frame_equals_predict(transducer, data):
    _, (x, _) = data
    expected = transducer.predict(x[:10])
    streamed = [[label for step in transducer.stream(line) for label in step] for line in x[:10]]
    assert streamed == expected
    assert sum(map(len, expected)) > 10


def test_a_padded_array_with_lengths_equals_the_list(ctc, transducer, data):
    _, (x, _) = data
    lines = x[:20]
    lengths = np.array([len(line) for line in lines])
    padded = np.full((20, lengths.max(), N_FEATURES), np.nan, np.float32)  # dropped
    for i, line in enumerate(lines):
        padded[i, : len(line)] = line
    for model in (ctc, transducer):
        expected = model.predict(lines)
        assert model.predict(padded, lengths=lengths) == expected
        assert model.predict(torch.from_numpy(padded), lengths=torch.from_numpy(lengths)) == (
            expected
        )
        assert [model.predict([line])[0] for line in lines] == expected


def test_a_bidirectional_encoder_trains_and_predicts_each_line(data):
    (x, y), (xt, _) = data
    model = Recognizer("gru", "ctc", bidirectional=True, **SMALL).fit(
        x[:64], y[:64], max_steps=2, progress=False
    )
    out = model.predict(xt[:5])
    assert len(out) == 5 and all(all(1 <= v < N_LABELS for v in row) for row in out)
    with pytest.raises(ArgumentError, match="stream needs"):
        next(model.stream(xt[0]))


def test_save_and_load_give_the_same_transcriptions(ctc, transducer, data, tmp_path):
    _, (x, _) = data
    for i, model in enumerate((ctc, transducer)):
        model.save(tmp_path / f"r{i}")
        loaded = Recognizer.load(tmp_path / f"r{i}")
        assert loaded.predict(x[:30]) == model.predict(x[:30])
        assert loaded.options == model.options
    with pytest.raises(CheckpointError):
        Recognizer.load(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(ArgumentError, match="not a saved Recognizer"):
        ctc.save(tmp_path / "other")


def test_validation_keeps_the_best_weights_and_logs_the_cer(data):
    (x, y), (xt, yt) = data
    model = Recognizer("lstm", "ctc", **SMALL).fit(
        x[:64], y[:64], val=(xt[:20], yt[:20]), max_steps=4, progress=False
    )
    logged = [h["val_cer"] for h in model.history if "val_cer" in h]
    assert len(logged) == 2
    assert model.evaluate(xt[:20], yt[:20])["cer"] == pytest.approx(min(logged))


def test_features_are_standardised_with_the_training_frames_statistics(data):
    (x, y), _ = data
    frames = np.concatenate(x[:100]).astype(np.float64)
    model = Recognizer("lstm", "ctc", **SMALL).fit(x[:100], y[:100], max_steps=1, progress=False)
    np.testing.assert_allclose(model.mean.numpy(), frames.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(model.std.numpy(), frames.std(0), rtol=1e-6, atol=1e-7)
    # a per-channel affine change of the features is undone: training takes the same steps
    scale = np.array([100.0, 0.01, 3.0, 1.0, 50.0, 0.5], np.float32)
    moved = [line * scale - 7.0 for line in x[:100]]
    a = Recognizer("lstm", "ctc", **SMALL).fit(x[:100], y[:100], max_steps=5, progress=False)
    b = Recognizer("lstm", "ctc", **SMALL).fit(moved, y[:100], max_steps=5, progress=False)
    for name, value in a.model.state_dict().items():
        # Adam moves a weight by about lr * sign(gradient) at first, so a near-zero gradient
        # whose sign flips under the float32 rounding of the standardised frames moves it
        # by up to 6e-4 (measured); without the division by std the weights differ by 0.07
        torch.testing.assert_close(b.model.state_dict()[name], value, rtol=0, atol=5e-3)


def test_inputs_are_not_modified(data):
    (x, y), _ = data
    lines, labels = [line.copy() for line in x[:40]], [list(r) for r in y[:40]]
    model = Recognizer("lstm", "transducer", **SMALL).fit(
        lines, labels, max_steps=1, progress=False
    )
    model.predict(lines)
    assert all(np.array_equal(a, b) for a, b in zip(lines, x[:40])) and labels == y[:40]


def test_ctc_frames_needed_counts_a_blank_between_equal_neighbours():
    assert ctc_frames_needed([]) == 0
    assert ctc_frames_needed([1, 2, 3]) == 3
    assert ctc_frames_needed([1, 1, 2, 2, 2]) == 8


def line(frames: int) -> np.ndarray:
    return np.zeros((frames, N_FEATURES), np.float32)


@pytest.mark.parametrize(
    "x, y, kwargs, error, words",
    [
        ([line(3)], [[0, 1]], {}, ArgumentError, r"y\[0\] holds the blank 0"),
        ([line(3)], [[1, -2]], {}, ArgumentError, "outside 1..4"),
        ([line(3)], [[1, 5]], {}, ArgumentError, "outside 1..4"),
        ([line(3)], [[1.5]], {}, ArgumentTypeError, "integer labels"),
        ([line(3)], [[1], [2]], {}, ArgumentError, "2 label sequences, x has 1"),
        ([line(3)], "12", {}, ArgumentTypeError, "list of label sequences"),
        ([line(3)], [[1, 1, 1]], {}, DataError, r"y\[0\] needs at least 5 frames"),
        ([line(3), np.zeros((3, 2))], [[1], [1]], {}, ArgumentError, r"x\[1\] must have shape"),
        ([line(0)], [[1]], {}, ArgumentError, r"x\[0\] must have shape \(T, 6\) with T >= 1"),
        ([], [], {}, ArgumentError, "x is empty"),
        (np.zeros((2, 3)), [[1], [1]], {}, ArgumentError, "padded array with 3 axes"),
        ("abc", [[1]], {}, ArgumentTypeError, "list of sequences or a padded array"),
        ([line(3)], [[1]], {"lengths": [3]}, ArgumentError, "lengths is for a padded array"),
        (np.zeros((1, 3, 6)), [[1]], {"lengths": np.array([4])}, ArgumentError, r"\[1, 3\]"),
        ([np.full((3, 6), np.nan)], [[1]], {}, DataError, "NaN"),
        ([line(3)], [[1]], {"val": ([line(3)],)}, ArgumentError, "val must be a tuple"),
        ([line(3)], [[1]], {"epochs": 0}, ArgumentError, "epochs must be positive"),
    ],
)
def test_bad_training_input_is_refused_clearly(x, y, kwargs, error, words):
    model = Recognizer(n_labels=N_LABELS, **SMALL)
    with pytest.raises(error, match=words):
        model.fit(x, y, max_steps=1, progress=False, **kwargs)
    assert model.model is None and model.input_dim is None  # nothing learned from bad input


def test_bad_use_is_refused_clearly(transducer):
    fresh = Recognizer()
    for call in (
        lambda: fresh.predict([line(3)]),
        lambda: fresh.evaluate([line(3)], [[1]]),
        lambda: fresh.save("unused"),
        lambda: next(fresh.stream([np.zeros(6)])),
    ):
        with pytest.raises(NotFittedError, match="call fit before"):
            call()
    with pytest.raises(ArgumentError, match="6 features per frame"):
        transducer.predict([np.zeros((4, 5), np.float32)])
    with pytest.raises(ArgumentError, match="beam search is for head='ctc'"):
        transducer.predict([line(4)], beam=2)
    with pytest.raises(ArgumentError, match=r"frame 1 must have shape \(6,\)"):
        list(transducer.stream([np.zeros(6), np.zeros(5)]))
    for kwargs, words in (
        (dict(head="attention"), "head must be one of"),
        (dict(n_labels=1), "n_labels must be >= 2"),
        (dict(d_model=0), "d_model must be a positive int"),
        (dict(max_symbols_per_frame=0), "max_symbols_per_frame"),
        (dict(input_dim=3), "input_dim is set by Recognizer"),
        (dict(encoder="no_such_layer"), "no_such_layer"),
    ):
        with pytest.raises((ArgumentError, ValueError), match=words):
            Recognizer(**kwargs)
    with pytest.raises(ArgumentTypeError, match="bidirectional must be a bool"):
        Recognizer(bidirectional="yes")


def test_predictions_score_as_the_metric_says(ctc, data):
    _, (x, y) = data
    got = ctc.predict(x[:50])
    exact = np.mean([a == b for a, b in zip(got, y[:50])])
    scores = ctc.evaluate(x[:50], y[:50])
    assert scores == {"cer": character_error_rate(y[:50], got), "exact_match": exact}
