"""Classification datasets as LM tasks (AnswerAtEnd): the layout, labels recomputed
independently, seeded batches, and `statewise train` on listops and seq_class."""

import numpy as np
import pytest
import torch

from statewise.tasks.base import IGNORE
from statewise.tasks.config import DataConfig, build_task
from statewise.tasks.labelled import AnswerAtEnd, LabelledSplit
from statewise.tasks.listops import VOCAB
from statewise.train.config import config_from_dict
from statewise.train.trainer import train
from tests.tasks.test_listops import _evaluate

LISTOPS = dict(task="listops", seq_len=48, n_train=300, n_val=40, n_test=50, max_depth=3)


def _split(rows, labels):
    lengths = np.array([len(r) for r in rows])
    x = np.zeros((len(rows), 6), dtype=np.int64)
    for i, r in enumerate(rows):
        x[i, : len(r)] = r
    return LabelledSplit(x, np.array(labels), lengths)


def test_layout_by_hand():
    split = _split([[3, 1, 2], [4]], [1, 0])
    task = AnswerAtEnd({"train": split, "val": split, "test": split}, 5, 2, seed=0)
    assert task.vocab_size == 5 + 1 + 2
    ((inputs, targets),) = task.test_batches(batch_size=8)
    z, i = 0, IGNORE
    assert inputs.tolist() == [[3, 1, 2, 5, z, z, z], [4, 5, z, z, z, z, z]]  # query 5, pad 0
    assert targets.tolist() == [[i, i, i, 7, i, i, i], [i, 6, i, i, i, i, i]]  # 6 + label
    ((wider, _),) = task.test_batches(8, 1, length=9)
    assert wider.shape == (2, 9) and torch.equal(wider[:, :7], inputs)
    with pytest.raises(ValueError, match="width must be >= 7"):
        task.test_batches(8, 1, length=6)


def _answers(task, batch):
    """(decoded token rows, labels) read back from a batch."""
    inputs, targets = batch
    out = []
    for row, target in zip(inputs, targets, strict=True):
        (pos,) = torch.nonzero(target != IGNORE).flatten().tolist()
        assert row[pos] == task.query and (row[pos + 1 :] == 0).all()
        out.append((row[:pos].tolist(), int(target[pos]) - task.answer0))
    return out


def test_listops_labels_recomputed_independently():
    task = build_task(DataConfig(**LISTOPS), seed=1)
    assert task.vocab_size == len(VOCAB) + 1 + 10
    batches = [task.train_batch(0, 16), *task.eval_batches(16, 2), *task.test_batches(16)]
    for batch in batches:
        for ids, label in _answers(task, batch):
            assert _evaluate([VOCAB[i] for i in ids]) == label


def test_seq_class_labels_match_sklearn():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    bunch = sklearn_datasets.load_digits()
    images = {tuple(row): int(y) for row, y in zip(bunch.data.astype(int), bunch.target)}
    task = build_task(DataConfig(task="seq_class"), seed=0)
    ((inputs, _),) = task.eval_batches(8, 1)
    assert inputs.shape == (8, 65)
    for ids, label in _answers(task, task.train_batch(3, 32)):
        assert len(ids) == 64 and images[tuple(v - 1 for v in ids)] == label


def test_batches_are_seeded_and_splits_disjoint():
    a, b = build_task(DataConfig(**LISTOPS), 1), build_task(DataConfig(**LISTOPS), 1)
    for x, y in zip(a.train_batch(7, 8), b.train_batch(7, 8), strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a.train_batch(7, 8)[0], a.train_batch(8, 8)[0])
    rows = {
        name: {tuple(a.splits[name].x[i]) for i in range(len(a.splits[name]))}
        for name in ("train", "val", "test")
    }
    assert not (rows["train"] & rows["val"] or rows["train"] & rows["test"])
    assert sum(len(x) for x, _ in a.test_batches(16)) == 50  # the test split, once
    assert sum(len(x) for x, _ in a.eval_batches(16, 100)) == 40


def test_config_errors():
    with pytest.raises(ValueError, match="data.dataset"):
        DataConfig(task="seq_class", dataset="mnist")
    with pytest.raises(ValueError, match="data.test_fraction"):
        DataConfig(task="seq_class", val_fraction=0.5, test_fraction=0.6)
    with pytest.raises(ValueError, match="data.p_operator"):
        DataConfig(task="listops", p_operator=1.0)
    with pytest.raises(ValueError, match="data.max_args"):
        DataConfig(task="listops", max_args=1)
    split = _split([[3, 9]], [0])
    with pytest.raises(ValueError, match="token ids"):
        AnswerAtEnd({"train": split, "val": split, "test": split}, 5, 2, seed=0)


@pytest.mark.parametrize("data", [LISTOPS, {"task": "seq_class"}])
def test_statewise_train_runs(tmp_path, data):
    config = config_from_dict(
        {
            "model": {"layer": "gru", "d_model": 16, "n_layers": 1, "vocab_size": 32},
            "data": data,
            "train": {"steps": 4, "batch_size": 8, "eval_every": 4, "eval_batches": 2},
        }
    )
    last = train(config, tmp_path / "run", progress=False)
    assert last["step"] == 4 and np.isfinite(last["val_loss"])
    assert 0.0 <= last["val_accuracy"] <= 1.0
