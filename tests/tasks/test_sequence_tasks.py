"""The tasks of the seq2seq, recogniser and tagger heads as ``statewise train`` reads them:
batches that depend only on (seed, step), validation and test data apart from training,
and test batches of the length asked for."""

from __future__ import annotations

import datetime

import pytest
import torch

from statewise.errors import DataError
from statewise.tasks.config import SEQUENCE_TASKS, DataConfig, build_task
from statewise.tasks.transduction import EOS, VOCAB, _date_days

CONFIGS = {name: DataConfig(task=name, seq_len=40) for name in SEQUENCE_TASKS}


def same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name", SEQUENCE_TASKS)
def test_batches_depend_on_seed_and_step_only(name):
    a, b = build_task(CONFIGS[name], 0), build_task(CONFIGS[name], 0)
    batch = a.train_batch(5, 6)
    assert same(batch, b.train_batch(5, 6))
    assert not same(batch, a.train_batch(6, 6))
    assert not same(batch, build_task(CONFIGS[name], 1).train_batch(5, 6))
    assert all(t.shape[0] == 6 for t in batch)
    val = a.eval_batches(6, 2)
    assert len(val) == 2 and same(val[1], b.eval_batches(6, 2)[1])
    assert not any(same(v, a.train_batch(s, 6)) for v in val for s in range(4))


@pytest.mark.parametrize("name", ["reverse", "sort", "add"])
def test_transduction_pairs_are_right_and_test_lengths_are_kept(name):
    task = build_task(DataConfig(task=name, lengths=[3, 4]), 0)
    vocab = VOCAB[name]
    source, target = task.train_batch(0, 32)
    for s, t in zip(source.tolist(), target.tolist()):
        src, tgt = vocab.decode(s), vocab.decode(t[1:])  # after BOS, up to EOS
        digits = src.split("+")
        assert {len(d) for d in digits} <= {3, 4} and EOS in t
        want = {"reverse": src[::-1], "sort": "".join(sorted(src))}.get(name)
        assert tgt == (want if want is not None else str(int(digits[0]) + int(digits[1])))
    long_source, _ = task.test_batches(4, 1, 9)[0]
    assert all(len(vocab.decode(s).split("+")[0]) == 9 for s in long_source.tolist())


def test_date_validation_pairs_are_unseen_days():
    task = build_task(DataConfig(task="date"), 0)
    test_days = set(_date_days("test"))
    first = datetime.date(1950, 1, 1)
    for _, target in task.eval_batches(16, 2):
        for row in target.tolist():
            day = datetime.date.fromisoformat(VOCAB["date"].decode(row[1:]))
            assert (day - first).days in test_days
    with pytest.raises(DataError, match="no lengths"):
        task.test_batches(4, 1, 10)


def test_digit_line_test_batches_have_the_asked_number_of_digits():
    task = build_task(DataConfig(task="digit_lines"), 0)
    x, lengths, labels, label_lengths = task.test_batches(5, 1, 15)[0]
    assert label_lengths.tolist() == [15] * 5 and x.shape[2] == task.input_dim
    assert bool((labels >= 1).all()) and int(labels.max()) < task.n_classes
    assert bool((lengths >= 8 * 15).all())  # eight columns per image, gaps beside


def test_python_tags_windows_are_the_asked_length():
    task = build_task(DataConfig(task="python_tags", seq_len=40), 0)
    chars, tags = task.train_batch(0, 3)
    assert chars.shape == tags.shape == (3, 40)
    assert task.test_batches(2, 1, 100)[0][0].shape == (2, 100)
    assert 0 <= int(tags.min()) and int(tags.max()) < task.n_classes
