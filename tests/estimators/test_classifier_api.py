"""statewise.SequenceClassifier: shapes/types, learning a separable toy task, save/load, errors."""

import numpy as np
import pytest
import torch

import statewise
from statewise import ClassifierHead, SequenceClassifier
from statewise.estimators.classify import NotFittedError

SMALL = dict(layer="gru", d_model=16, n_layers=1, mlp_ratio=0.0)


def _contains_three(n=256, T=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 16, (n, T))  # about 40% contain a 3
    return x, (x == 3).any(1).astype(np.int64)


@pytest.fixture(scope="module")
def fitted():
    x, y = _contains_three()
    clf = SequenceClassifier(**SMALL, lr=5e-3).fit(
        x, y, val=(x[:32], y[:32]), epochs=20, progress=False
    )
    return clf, x, y


def test_exports():
    assert statewise.SequenceClassifier is SequenceClassifier
    assert issubclass(ClassifierHead, torch.nn.Module)


def test_fit_learns_contains_token(fitted):
    clf, x, y = fitted
    assert clf.vocab_size == 16 and clf.n_classes == 2 and clf.input_dim is None
    first = np.mean([h["loss"] for h in clf.history[:6]])
    last = np.mean([h["loss"] for h in clf.history[-6:]])
    assert last < 0.6 * first
    scores = clf.evaluate(x, y)
    assert set(scores) == {"accuracy", "loss"} and scores["accuracy"] > 0.95
    assert clf.evaluate(*_contains_three(seed=5))["accuracy"] > 0.95  # held out; base rate 0.63
    assert "val_loss" in clf.history[-1] and "val_accuracy" in clf.history[-1]


def test_shapes_and_types(fitted):
    clf, x, _ = fitted
    labels = clf.predict(x[:5])
    assert isinstance(labels, np.ndarray) and labels.shape == (5,) and labels.dtype == np.int64
    probs = clf.predict_proba(x[:5])
    assert probs.shape == (5, 2) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probs.argmax(1), labels)
    t = clf.predict(torch.as_tensor(x[:5]))
    assert isinstance(t, torch.Tensor) and t.tolist() == labels.tolist()
    assert isinstance(clf.predict_proba(torch.as_tensor(x[:5], dtype=torch.int32)), torch.Tensor)


def test_padding_matches_unpadded(fitted):
    clf, x, _ = fitted
    padded = np.concatenate([x[:4, :5], np.zeros((4, 3), dtype=x.dtype)], axis=1)
    lengths = np.full(4, 5)
    expected = clf.predict_proba(x[:4, :5])
    np.testing.assert_allclose(clf.predict_proba(padded, lengths=lengths), expected, atol=1e-5)
    mask = torch.arange(8)[None].expand(4, 8) < 5
    np.testing.assert_allclose(clf.predict_proba(padded, mask=mask), expected, atol=1e-5)


def test_save_load_identical(fitted, tmp_path):
    clf, x, _ = fitted
    clf.save(tmp_path / "clf")
    clf.save(tmp_path / "clf")  # overwriting is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf"]
    loaded = SequenceClassifier.load(tmp_path / "clf")
    np.testing.assert_array_equal(loaded.predict_proba(x), clf.predict_proba(x))


def test_real_valued_inputs(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 8, 3)).astype(np.float32) * 5 + 2
    y = (x[:, :, 0].mean(1) > 2).astype(np.int64)
    clf = SequenceClassifier(**SMALL).fit(x, y, lengths=np.full(64, 8), max_steps=3, progress=False)
    assert clf.input_dim == 3 and clf.vocab_size is None and len(clf.history) == 3
    assert clf.predict_proba(x).shape == (64, 2)
    clf.save(tmp_path / "r")
    np.testing.assert_array_equal(
        SequenceClassifier.load(tmp_path / "r").predict(x), clf.predict(x)
    )
    flat = SequenceClassifier(**SMALL, input_dim=1, n_classes=3).fit(
        x[:, :, 0], y, max_steps=1, progress=False
    )
    assert flat.predict_proba(torch.as_tensor(x[:2, :, 0])).shape == (2, 3)


def test_errors(fitted, tmp_path):
    clf, x, y = fitted
    with pytest.raises(NotFittedError, match="call fit before predict"):
        SequenceClassifier().predict(x)
    with pytest.raises(ValueError, match="n_classes"):
        SequenceClassifier(n_classes=1)
    with pytest.raises(ValueError, match="not both"):
        SequenceClassifier(vocab_size=4, input_dim=2)
    with pytest.raises(ValueError, match="epochs must be positive"):
        SequenceClassifier(**SMALL).fit(x, y, epochs=0)
    with pytest.raises(TypeError, match="x must be a numpy array or torch tensor"):
        clf.predict(x.tolist())
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 16\)"):
        clf.predict(x + 1)
    with pytest.raises(TypeError, match="x must hold integer token ids"):
        clf.predict(x.astype(np.float32))
    with pytest.raises(ValueError, match=r"y must have shape \(256,\)"):
        SequenceClassifier(**SMALL).fit(x, y[:5])
    with pytest.raises(TypeError, match="y must hold integer class labels"):
        SequenceClassifier(**SMALL).fit(x, y.astype(float))
    with pytest.raises(ValueError, match=r"y labels must lie in \[0, 2\)"):
        clf.evaluate(x, y + 1)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 8\]"):
        clf.predict(x, lengths=np.zeros(256, dtype=np.int64))
    with pytest.raises(ValueError, match="lengths or mask, not both"):
        clf.predict(x, lengths=np.ones(256, dtype=int), mask=np.ones((256, 8), dtype=bool))
    with pytest.raises(ValueError, match="val must be a tuple"):
        SequenceClassifier(**SMALL).fit(x, y, val=x)
    with pytest.raises(ValueError, match="not a saved SequenceClassifier"):
        SequenceClassifier.load(tmp_path)
    real = SequenceClassifier(**SMALL, input_dim=2)
    with pytest.raises(ValueError, match=r"x must have shape \(N, T, 2\)"):
        real.fit(np.zeros((4, 5), dtype=np.float32), np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        real.fit(np.full((4, 5, 2), np.nan, dtype=np.float32), np.array([0, 1, 0, 1]))
