"""Synthetic arena tasks: every target recomputed from the inputs in plain Python."""

from __future__ import annotations

import pytest
import torch

from statewise.cli import main
from statewise.errors import ConfigError, DataError
from statewise.tasks.base import IGNORE
from statewise.tasks.config import SEQUENCE_TASKS, TASKS, DataConfig, build_task
from statewise.tasks.copying import InductionHeads, SelectiveCopy
from statewise.tasks.long_range import Adding, Passkey
from statewise.tasks.state_tracking import FIRST, PAD, QUERY, CycleNav, EvenPairs, ModArith, Parity
from tests import run_dirs

NEW_TASKS = tuple(t for t in TASKS if t not in ("char_lm", "lm", "mqar", *SEQUENCE_TASKS))


def answers(row_y: list[int]) -> list[tuple[int, int]]:
    return [(t, v) for t, v in enumerate(row_y) if v != IGNORE]


def rows(batch):
    x, y = batch
    return zip(x.tolist(), y.tolist())


# --- copying -------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [24, 64 * 24])
def test_selective_copy_targets_are_the_data_tokens_in_order(length):
    task = SelectiveCopy(seq_len=24, vocab_size=10, n_copy=4, seed=2)
    batch = task.train_batch(0, 16) if length == 24 else task.test_batches(4, 1, length)[0]
    assert batch[0].shape[1] == length
    for row_x, row_y in rows(batch):
        context = row_x[: length - 4]
        data = [v for v in context if v != SelectiveCopy.BLANK]
        assert len(data) == 4 and all(2 <= v < 10 for v in data)
        # one marker per token to copy; the answers are not fed back (the paper's layout)
        assert row_x[length - 4 :] == [SelectiveCopy.MARKER] * 4
        assert answers(row_y) == [(length - 4 + i, v) for i, v in enumerate(data)]


@pytest.mark.parametrize("length", [16, 64 * 16])
def test_induction_heads_target_follows_the_earlier_trigger(length):
    task = InductionHeads(seq_len=16, vocab_size=12, seed=4)
    batch = task.train_batch(3, 16) if length == 16 else task.test_batches(4, 1, length)[0]
    assert batch[0].shape[1] == length
    for row_x, row_y in rows(batch):
        assert row_x[-1] == InductionHeads.TRIGGER and row_x.count(InductionHeads.TRIGGER) == 2
        first = row_x.index(InductionHeads.TRIGGER)
        assert answers(row_y) == [(length - 1, row_x[first + 1])]
        assert all(v >= 2 for v in row_x if v != InductionHeads.TRIGGER)


# --- state tracking ------------------------------------------------------------------------


def strings(task, batch):
    """(symbols, answer) per row, checking the layout: symbols, =, padding."""
    out = []
    for row_x, row_y in rows(batch):
        ((t, answer),) = answers(row_y)
        assert row_x[t] == QUERY and all(v == PAD for v in row_x[t + 1 :])
        symbols = [v - FIRST for v in row_x[:t]]
        assert all(0 <= s < task.n_symbols for s in symbols)
        out.append((symbols, answer - task.answer0))
    return out


def parity(s):
    return sum(s) % 2


def even_pairs(s):
    return int(sum(a != b for a, b in zip(s, s[1:])) % 2 == 0)


def cycle(s):
    position = 0
    for move in s:
        position = (position + {0: 1, 1: -1, 2: 0}[move]) % 5
    return position


def arith(task):
    def value(s):
        text = "".join(task.names[i] for i in s)
        return eval(text) % task.modulus  # Python's own parser: an independent evaluator

    return value


STATE_TASKS = [
    ("parity", lambda: Parity(seed=1), lambda task: parity),
    ("even_pairs", lambda: EvenPairs(seed=1), lambda task: even_pairs),
    ("cycle_nav", lambda: CycleNav(modulus=5, seed=1), lambda task: cycle),
    ("mod_arith", lambda: ModArith(modulus=5, seed=1), arith),
    ("mod_arith_brackets", lambda: ModArith(modulus=5, brackets=True, seed=1), arith),
]


@pytest.mark.parametrize("name,make,truth", STATE_TASKS, ids=[t[0] for t in STATE_TASKS])
def test_state_tracking_answers_and_lengths(name, make, truth):
    task = make()
    truth = truth(task)
    train = strings(task, task.train_batch(0, 64))
    assert task.train_batch(0, 64)[0].shape == (64, 41)
    lengths = {len(s) for s, _ in train}
    assert max(lengths) <= 40 and len(lengths) > 5  # random lengths per example
    for length in (41, 100, 256):
        batch = task.test_batches(8, 1, length)[0]
        assert batch[0].shape == (8, length + 1)
        test = strings(task, batch)
        expected = length - (1 - length % 2) if name.startswith("mod_arith") else length
        assert all(len(s) == expected for s, _ in test)
        train += test
    for symbols, answer in train:
        assert answer == truth(symbols), symbols
    if name == "mod_arith_brackets":
        assert any(task.names.index("(") in s for s, _ in train)
    if name == "mod_arith":
        assert "(" not in task.names


DENSE_TASKS = [
    ("parity", lambda dense: Parity(seed=1, prefix_targets=dense), lambda task: parity),
    ("even_pairs", lambda dense: EvenPairs(seed=1, prefix_targets=dense), lambda t: even_pairs),
    ("cycle_nav", lambda dense: CycleNav(seed=1, prefix_targets=dense), lambda t: cycle),
    ("mod_arith", lambda dense: ModArith(seed=1, prefix_targets=dense), arith),
]


@pytest.mark.parametrize("name,make,truth", DENSE_TASKS, ids=[t[0] for t in DENSE_TASKS])
def test_prefix_targets_are_the_answers_of_every_prefix_that_is_a_string(name, make, truth):
    task = make(True)
    truth = truth(task)
    x, y = task.train_batch(3, 64)
    n_targets = 0
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        end = row_x.index(QUERY)
        symbols = [v - FIRST for v in row_x[:end]]
        assert row_y[end] - task.answer0 == truth(symbols)
        for i in range(end):
            prefix = symbols[: i + 1]
            # arithmetic prefixes are expressions when they end at a number (even index)
            is_string = not name.startswith("mod_arith") or i % 2 == 0
            want = truth(prefix) + task.answer0 if is_string else IGNORE
            assert row_y[i] == want, (prefix, row_y[i])
            n_targets += is_string
        assert all(v == IGNORE for v in row_y[end + 1 :])
    assert n_targets > 64 * 10  # about 20 (10 for arithmetic) prefixes per string of 1..40
    # validation and test keep the single answer at the query
    ((_, y_val),) = task.eval_batches(64, 1)
    ((_, y_test),) = task.test_batches(64, 1, 50)
    assert ((y_val != IGNORE).sum(1) == 1).all() and ((y_test != IGNORE).sum(1) == 1).all()
    # the option changes the training targets only: the same strings as without it, and
    # where the plain batch has a target the dense one has the same
    plain_x, plain_y = make(False).train_batch(3, 64)
    assert torch.equal(plain_x, x)
    assert torch.equal(y[plain_y != IGNORE], plain_y[plain_y != IGNORE])


def test_prefix_targets_are_refused_where_prefixes_are_not_strings():
    with pytest.raises(DataError, match="brackets"):
        ModArith(brackets=True, prefix_targets=True)
    for task in ("mod_arith_brackets", "mqar", "char_lm"):
        with pytest.raises(ConfigError, match="prefix_targets"):
            DataConfig(task=task, prefix_targets=True)
    with pytest.raises(ConfigError, match="prefix_targets"):
        DataConfig(task="parity", prefix_targets="yes")
    task = build_task(DataConfig(task="mod_arith", prefix_targets=True), seed=0)
    assert task.prefix_targets


def test_state_tracking_answers_are_balanced():
    _, y = Parity(seed=0).train_batch(0, 512)
    real = y[y != IGNORE]
    assert 0.4 < (real == Parity(seed=0).answer0).float().mean() < 0.6


# --- long range ----------------------------------------------------------------------------


@pytest.mark.parametrize("length", [32, 1000])
def test_adding_answer_is_the_quantised_sum_of_the_marked_numbers(length):
    task = Adding(seq_len=32, n_levels=10, seed=5)
    batch = task.train_batch(2, 16) if length == 32 else task.test_batches(4, 1, length)[0]
    assert batch[0].shape[1] == length
    for row_x, row_y in rows(batch):
        numbers = row_x[:-1]
        assert row_x[-1] == 20  # the query
        marked = [(i, v - 10) for i, v in enumerate(numbers) if 10 <= v < 20]
        assert len(marked) == 2 and all(0 <= v < 10 for v in numbers if v < 10)
        (i, a), (j, b) = marked
        assert i < len(numbers) // 2 <= j
        total = a / 9 + b / 9  # the real-valued sum of the two numbers in [0, 1]
        assert answers(row_y) == [(length - 1, 21 + round(total * 9))]
    assert task.vocab_size == 21 + 19


@pytest.mark.parametrize("length", [40, 4000])
def test_passkey_targets_are_the_key_digits(length):
    task = Passkey(seq_len=40, n_digits=5, seed=6)
    batch = task.train_batch(1, 16) if length == 40 else task.test_batches(2, 1, length)[0]
    assert batch[0].shape[1] == length
    for row_x, row_y in rows(batch):
        k = row_x.index(Passkey.KEY)
        key = row_x[k + 1 : k + 6]
        assert all(2 <= d < 12 for d in key)
        ask = row_x.index(Passkey.ASK)
        assert ask == length - 5 and row_x.count(Passkey.KEY) == 1
        assert answers(row_y) == [(ask + i, d) for i, d in enumerate(key)]
        filler = row_x[:k] + row_x[k + 6 : ask]
        assert all(12 <= f < 20 for f in filler)


# --- every task ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW_TASKS)
def test_deterministic_validation_and_test_streams_differ(name):
    config = DataConfig(task=name, seq_len=48, vocab_size=16, n_copy=4)
    a, b = build_task(config, seed=0), build_task(config, seed=0)
    x = a.train_batch(5, 8)
    assert torch.equal(x[0], b.train_batch(5, 8)[0]) and torch.equal(x[1], b.train_batch(5, 8)[1])
    assert not torch.equal(x[0], a.train_batch(6, 8)[0])
    assert not torch.equal(x[0], build_task(config, seed=1).train_batch(5, 8)[0])
    val = a.eval_batches(8, 2)
    assert len(val) == 2 and torch.equal(val[1][0], b.eval_batches(8, 2)[1][0])
    assert not any(torch.equal(v[0], a.train_batch(s, 8)[0]) for v in val for s in range(4))
    width = x[0].shape[1]
    test = a.test_batches(8, 2, 96)
    assert len(test) == 2 and all(t[0].shape[0] == 8 for t in test)
    assert torch.equal(test[0][0], b.test_batches(8, 2, 96)[0][0])
    for inputs, targets in [x, *val, *test]:
        assert inputs.dtype == targets.dtype == torch.int64 and inputs.shape == targets.shape
        assert 0 <= inputs.min() and inputs.max() < a.vocab_size
        real = targets[targets != IGNORE]
        assert real.numel() > 0 and 0 <= real.min() and real.max() < a.vocab_size
    assert all(v[0].shape[1] == width for v in val)
    assert a.metric == "accuracy"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(task="selective_copy", seq_len=10, n_copy=8), "data.seq_len"),
        (dict(task="selective_copy", vocab_size=2), "data.vocab_size"),
        (dict(task="induction_heads", seq_len=2), "data.seq_len"),
        (dict(task="selective_copy", n_copy=0), "data.n_copy"),
        (dict(task="parity", train_max_len=0), "data.train_max_len"),
        (dict(task="mod_arith", modulus=1), "data.modulus"),
        (dict(task="cycle_nav", modulus=1), "data.modulus"),
        (dict(task="adding", n_levels=1), "data.n_levels"),
        (dict(task="adding", seq_len=2), "data.seq_len"),
        (dict(task="passkey", n_digits=0), "data.n_digits"),
        (dict(task="passkey", seq_len=11, n_digits=5), "data.seq_len"),
        (dict(task="copying"), "data.task"),
    ],
)
def test_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_task(DataConfig(**kwargs), seed=0)


def test_direct_constructor_errors_and_bad_test_lengths():
    for bad in (
        lambda: SelectiveCopy(n_copy=0),
        lambda: Passkey(n_digits=0),
        lambda: Adding(n_levels=1),
        lambda: ModArith(modulus=1),
        lambda: Parity(train_max_len=0),
    ):
        with pytest.raises(ValueError, match="data."):
            bad()
    with pytest.raises(ValueError, match="test length"):
        SelectiveCopy(seq_len=32, n_copy=8).test_batches(2, 1, 10)
    with pytest.raises(ValueError, match="test length"):
        Parity().test_batches(2, 1, 0)


TINY = """
[model]
layer = "gru"
d_model = 16
n_layers = 1

[data]
task = "{task}"
seq_len = 32
vocab_size = 16
n_copy = 4

[train]
steps = 3
batch_size = 4
eval_every = 3
eval_batches = 1
checkpoint_every = 3
log_every = 1
"""


@pytest.mark.parametrize("name", NEW_TASKS)
def test_statewise_train_runs_on_the_task(name, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(TINY.format(task=name))
    out = tmp_path / "out"
    argv = ["train", str(config), "--out", str(out), "--no-progress"]
    argv += ["--model.layer=gru", "--model.d_model=16", "--model.n_layers=1", "--train.steps=3"]
    assert main(argv) == 0, capsys.readouterr().err
    metrics = run_dirs.metrics(out)
    assert metrics[-1]["step"] == 3 and 0 <= metrics[-1]["val_accuracy"] <= 1
