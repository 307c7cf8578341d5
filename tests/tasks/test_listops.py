"""ListOps: every label recomputed by an independent evaluator, determinism, splits."""

import numpy as np
import pytest

from statewise.tasks.listops import N_CLASSES, PAD, VOCAB, listops


def _evaluate(tokens: list[str]) -> int:
    """A stack evaluator over the token strings, written apart from the generator."""
    stack: list = []
    for tok in tokens:
        if tok.startswith("["):
            stack.append([tok[1:]])
        elif tok == "]":
            frame = stack.pop()
            op, args = frame[0], frame[1:]
            assert len(args) >= 2
            if op == "MAX":
                v = max(args)
            elif op == "MIN":
                v = min(args)
            elif op == "SM":
                v = sum(args) % 10
            else:
                assert op == "MED"
                v = int(np.median(args))  # floors the mean of the middle two for even n
            if stack:
                stack[-1].append(v)
            else:
                return v
        else:
            stack[-1].append(int(tok))
    raise AssertionError("expression did not close")


def _depth(tokens: list[str]) -> int:
    depth = best = 0
    for tok in tokens:
        depth += tok.startswith("[")
        depth -= tok == "]"
        best = max(best, depth)
    return best


@pytest.fixture(scope="module")
def data():
    return listops(400, 50, 50, seed=3, max_depth=3, max_args=4, max_length=40)


def test_labels_recomputed_independently(data):
    for split in data.values():
        for row, label, length in zip(split.x, split.y, split.lengths, strict=True):
            tokens = [VOCAB[i] for i in row[:length]]
            assert (row[length:] == PAD).all() and (row[:length] != PAD).all()
            assert _evaluate(tokens) == label
            assert 1 <= _depth(tokens) <= 3


def test_shapes_and_ranges(data):
    for split, n in (("train", 400), ("val", 50), ("test", 50)):
        s = data[split]
        assert s.x.shape == (n, 40) and s.x.dtype == np.int64
        assert s.y.shape == s.lengths.shape == (n,)
        assert s.lengths.max() <= 40 and s.y.min() >= 0 and s.y.max() < N_CLASSES
        assert s.x.max() < len(VOCAB)
    assert len(set(data["train"].y.tolist())) == N_CLASSES  # every label occurs


def test_deterministic_and_seeded(data):
    again = listops(400, 50, 50, seed=3, max_depth=3, max_args=4, max_length=40)
    other = listops(400, 50, 50, seed=4, max_depth=3, max_args=4, max_length=40)
    for name in data:
        np.testing.assert_array_equal(data[name].x, again[name].x)
        np.testing.assert_array_equal(data[name].y, again[name].y)
    assert not np.array_equal(data["train"].x, other["train"].x)


def test_splits_are_disjoint(data):
    rows = [tuple(r) for s in data.values() for r in s.x]
    assert len(rows) == len(set(rows))


def test_errors():
    with pytest.raises(ValueError, match="max_depth"):
        listops(10, 1, 1, max_depth=0)
    with pytest.raises(ValueError, match="distinct expressions"):
        listops(500, 0, 0, max_depth=1, max_args=2, max_length=4)


def test_min_length_rejects_short_expressions():
    data = listops(100, 10, 10, seed=0, max_depth=5, max_args=6, max_length=96, min_length=20)
    for split in data.values():
        assert split.lengths.min() >= 20 and split.lengths.max() <= 96
    with pytest.raises(ValueError, match="min_length"):
        listops(10, 1, 1, max_length=8, min_length=9)
