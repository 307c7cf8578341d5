"""The string-to-string tasks: targets follow their rule, splits hold, vocabularies cover."""

import datetime

import pytest

from statewise.errors import DataError
from statewise.tasks.transduction import (
    DATE_FORMATS,
    LENGTH_SPLITS,
    TASKS,
    VOCAB,
    _date_days,
    make_pairs,
)


def test_digit_targets_follow_their_rules():
    for src, tgt in make_pairs("reverse", 50, seed=1):
        assert tgt == src[::-1] and src.isdigit()
    for src, tgt in make_pairs("sort", 50, seed=1):
        assert tgt == "".join(sorted(src)) and sorted(tgt) == sorted(src)
    for src, tgt in make_pairs("add", 50, seed=1):
        a, b = src.split("+")
        assert int(tgt) == int(a) + int(b) and len(a) == len(b) and a[0] != "0"


def test_lengths_and_the_length_split():
    train = make_pairs("reverse", 200, seed=0)
    assert {len(s) for s, _ in train} <= set(LENGTH_SPLITS["reverse"]["train"])
    assert {len(s) for s, _ in make_pairs("reverse", 20, seed=0, split="test")} == {30}
    assert {len(s) for s, _ in make_pairs("add", 20, lengths=[7])} == {15}


def test_dates_parse_back_and_test_dates_are_unseen():
    train_days, test_days = set(_date_days("train")), set(_date_days("test"))
    assert not train_days & test_days and len(test_days) > 1000
    first = datetime.date(1950, 1, 1)
    for split, days in (("train", train_days), ("test", test_days)):
        for src, iso in make_pairs("date", 300, seed=3, split=split):
            day = datetime.date.fromisoformat(iso)
            assert (day - first).days in days
            assert any(fmt(day) == src for fmt in DATE_FORMATS)


def test_every_date_format_is_a_different_string_and_keeps_the_date():
    day = datetime.date(2007, 11, 4)
    texts = [fmt(day) for fmt in DATE_FORMATS]
    assert len(set(texts)) == len(texts)
    assert all("2007" in t for t in texts) and any("Sunday" in t for t in texts)


@pytest.mark.parametrize("task", TASKS)
def test_vocabulary_round_trips_every_string(task):
    vocab = VOCAB[task]
    for src, tgt in make_pairs(task, 100, seed=2) + make_pairs(task, 20, seed=2, split="test"):
        for text in (src, tgt):
            assert vocab.decode(vocab.encode(text) + [2, 5]) == text  # EOS stops decoding
    batch = vocab.batch(["", "1"], bos=True, eos=True)
    assert batch.tolist() == [[1, 2, 0], [1, vocab.encode("1")[0], 2]]


def test_same_seed_same_pairs_and_clear_errors():
    assert make_pairs("sort", 10, seed=4) == make_pairs("sort", 10, seed=4)
    assert make_pairs("sort", 10, seed=4) != make_pairs("sort", 10, seed=5)
    with pytest.raises(DataError, match="task must be"):
        make_pairs("copy", 1)
    with pytest.raises(DataError, match="lengths"):
        make_pairs("reverse", 1, lengths=[0])
    with pytest.raises(DataError, match="not in the vocabulary"):
        VOCAB["reverse"].encode("12a")
