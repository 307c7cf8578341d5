"""Lines of handwritten digits: test lines use test images only, features are the columns."""

import numpy as np
import pytest

from statewise.errors import DataError
from statewise.tasks.digit_lines import digit_lines
from statewise.tasks.seq_class import load_digits_array, split_indices

pytest.importorskip("sklearn", reason="the digits are read from scikit-learn's wheel")


def _image_columns(rows):
    pixels, _ = load_digits_array()
    return {(pixels[r] / 16).astype(np.float32).reshape(8, 8).T.tobytes() for r in rows}


def test_lines_are_images_of_their_split_side_by_side():
    lines = digit_lines("test", 30, seed=1)
    pixels, digits = load_digits_array()
    rows = split_indices(len(digits), 0, 0.1, 0.2)
    test_images = _image_columns(rows["test"])
    train_images = _image_columns(rows["train"])
    for x, labels in zip(lines.features, lines.labels):
        assert 3 <= len(labels) <= 12 and all(1 <= y <= 10 for y in labels)
        assert x.shape[1] == 8 and 8 * len(labels) <= len(x) <= 8 * len(labels) + 2 * 13
        found = []
        t = 0
        while t < len(x):  # walk the line: blank gap columns, then 8 columns of one image
            if not x[t].any() and (t + 8 > len(x) or x[t : t + 8].tobytes() not in test_images):
                t += 1
                continue
            found.append(x[t : t + 8].tobytes())
            t += 8
        assert len(found) == len(labels)
        assert all(f in test_images and f not in train_images for f in found)


def test_batch_pads_and_keeps_lengths():
    lines = digit_lines("train", 5, seed=0)
    x, lengths, y, label_lengths = lines.batch(range(5))
    assert x.shape == (5, int(lengths.max()), 8) and y.shape == (5, int(label_lengths.max()))
    for i in range(5):
        assert np.array_equal(x[i, : lengths[i]].numpy(), lines.features[i])
        assert not x[i, lengths[i] :].any() and y[i, : label_lengths[i]].tolist() == lines.labels[i]


def test_seed_and_errors():
    a, b = digit_lines("val", 4, seed=2), digit_lines("val", 4, seed=2)
    assert a.labels == b.labels
    with pytest.raises(DataError, match="split"):
        digit_lines("dev", 1)
    with pytest.raises(DataError, match="min_digits"):
        digit_lines("train", 1, min_digits=5, max_digits=4)
