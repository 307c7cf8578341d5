"""Digits as a sequence: values checked against scikit-learn's own loader, seeded disjoint
splits, the two orders, and a clear error without scikit-learn."""

import importlib.util

import numpy as np
import pytest

from statewise.tasks.seq_class import N_CLASSES, PIXEL_VOCAB, digits, split_indices

sklearn_datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def reference():
    bunch = sklearn_datasets.load_digits()
    return bunch.data, bunch.target


def test_pixels_and_labels_match_sklearn(reference):
    data, target = reference
    rows = split_indices(len(target), 5, 0.1, 0.2)
    splits = digits(5)
    for name, split in splits.items():
        assert split.x.shape == (len(rows[name]), 64) and split.x.dtype == np.int64
        np.testing.assert_array_equal(split.x - 1, data[rows[name]].astype(np.int64))
        np.testing.assert_array_equal(split.y, target[rows[name]])
        assert (split.lengths == 64).all()
        assert split.x.min() >= 1 and split.x.max() < PIXEL_VOCAB
    assert len(set(splits["train"].y.tolist())) == N_CLASSES


def test_row_order_is_the_image_scaled(reference):
    data, target = reference
    rows = split_indices(len(target), 0, 0.1, 0.2)
    split = digits(0, order="row")["val"]
    assert split.x.shape == (len(rows["val"]), 8, 8) and split.x.dtype == np.float32
    expected = data[rows["val"]].reshape(-1, 8, 8) / 16
    np.testing.assert_allclose(split.x, expected, rtol=0, atol=1e-7)  # float32 of k / 16
    assert (split.lengths == 8).all()


def test_splits_disjoint_cover_everything_and_sizes():
    rows = split_indices(1797, 0, 0.1, 0.2)
    together = np.concatenate([rows["train"], rows["val"], rows["test"]])
    assert sorted(together.tolist()) == list(range(1797))
    assert (len(rows["test"]), len(rows["val"]), len(rows["train"])) == (359, 180, 1258)


def test_deterministic_from_seed():
    a, b, c = digits(1), digits(1), digits(2)
    for name in a:
        np.testing.assert_array_equal(a[name].x, b[name].x)
        np.testing.assert_array_equal(a[name].y, b[name].y)
    assert not np.array_equal(a["test"].y, c["test"].y)


def test_errors(monkeypatch):
    with pytest.raises(ValueError, match="order"):
        digits(order="column")
    with pytest.raises(ValueError, match="test_fraction"):
        digits(val_fraction=0.5, test_fraction=0.5)
    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "sklearn" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        digits()
