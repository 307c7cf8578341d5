"""Estimators' save(): it replaces only a saved model of the same kind, and a failed fit
leaves the estimator as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from statewise import Forecaster, SequenceClassifier
from statewise.errors import ArgumentError, CheckpointError, TrainingDiverged
from statewise.estimators.fit import train_loop
from tests.run_dirs import file_bytes

SMALL = dict(layer="gru", d_model=8, n_layers=1, mlp_ratio=0.0)


@pytest.fixture(scope="module")
def classifier() -> SequenceClassifier:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 8, (32, 6))
    return SequenceClassifier(**SMALL).fit(
        x, (x == 3).any(1).astype(np.int64), max_steps=2, progress=False
    )


@pytest.fixture(scope="module")
def forecaster() -> Forecaster:
    series = np.sin(np.arange(120) / 5).astype(np.float32)
    return Forecaster(layer="gru", d_model=8, n_layers=1, input_len=12, horizon=4).fit(
        series, max_steps=2, progress=False
    )


def test_save_into_a_directory_of_other_runs_is_refused_and_moves_nothing(tmp_path, classifier):
    """Today's defect: clf.save("runs") removed every other run in runs/."""
    runs = tmp_path / "runs"
    (runs / "run-a").mkdir(parents=True)
    (runs / "run-a" / "model.safetensors").write_bytes(b"someone else's weights")
    (runs / "notes.txt").write_text("mine")
    old = tmp_path / "runs.old"
    old.mkdir()
    (old / "keep.txt").write_text("a user's backup")
    before = file_bytes(tmp_path)
    with pytest.raises(ArgumentError, match=f"{runs} exists and is not a saved SequenceClassifier"):
        classifier.save(runs)
    assert file_bytes(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "runs.old"]  # no leftovers


def test_save_replaces_a_saved_model_of_the_same_kind_only(tmp_path, classifier, forecaster):
    target = tmp_path / "model"
    classifier.save(target)
    first = file_bytes(target)
    classifier.save(target)  # the same kind: replaced
    assert file_bytes(target) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing left beside it
    with pytest.raises(ArgumentError, match="not a saved Forecaster"):
        forecaster.save(target)  # another kind: refused
    assert file_bytes(target) == first
    (target / "extra.txt").write_text("added by the user")
    with pytest.raises(ArgumentError, match="not a saved SequenceClassifier"):
        classifier.save(target)  # no longer exactly a saved model
    assert (target / "extra.txt").read_text() == "added by the user"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ArgumentError):
        forecaster.save(a_file)
    assert a_file.read_text() == "x"


def test_load_of_a_damaged_save_is_a_checkpoint_error(tmp_path, classifier, forecaster):
    for estimator, meta in ((classifier, "classifier.json"), (forecaster, "forecaster.json")):
        path = tmp_path / meta
        estimator.save(path)
        cls = type(estimator)
        for content in (b"{not json", b"[1, 2]", b'{"options": {}}', b"\xff\xfe"):
            (path / meta).write_bytes(content)
            with pytest.raises(CheckpointError):
                cls.load(path)
        estimator.save(tmp_path / "fresh")
        (tmp_path / "fresh" / "model.safetensors").write_bytes(b"\x00" * 10)
        with pytest.raises(CheckpointError, match="model.safetensors"):
            cls.load(tmp_path / "fresh")
        (tmp_path / "fresh" / "model.safetensors").unlink()
        with pytest.raises(CheckpointError, match="not a saved"):
            cls.load(tmp_path / "fresh")
        for p in (tmp_path / "fresh").iterdir():
            p.unlink()
        (tmp_path / "fresh").rmdir()


def test_train_loop_stops_at_a_non_finite_loss_before_the_step():
    model = torch.nn.Linear(2, 1)
    at_step_3: dict[str, torch.Tensor] = {}
    calls = []

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 3:
            at_step_3.update({k: v.clone() for k, v in model.state_dict().items()})
        loss = model(torch.ones(1, 2)).sum()
        return loss * (float("nan") if len(calls) == 3 else 1.0)

    history: list = []
    with pytest.raises(TrainingDiverged, match="step 3: the loss is nan") as err:
        train_loop(
            model, loss_fn, 8, batch_size=1, lr=0.1, weight_decay=0.0, seed=0, total=10,
            budget_s=None, progress=False, history=history,
        )  # fmt: skip
    assert err.value.step == 3 and len(history) == 2
    for k, v in model.state_dict().items():  # the optimizer step of step 3 was not taken
        assert torch.equal(v, at_step_3[k])


@pytest.mark.parametrize("kind", ["classifier", "forecaster"])
def test_a_diverging_fit_leaves_the_estimator_as_it_was(kind, classifier, forecaster):
    """lr 1e30 overflows the weights at the first step; the fitted estimator keeps its
    model, statistics and history, and the error names the step and the value."""
    import copy

    fitted = copy.deepcopy(classifier if kind == "classifier" else forecaster)
    weights = {k: v.clone() for k, v in fitted.model.state_dict().items()}
    history = list(fitted.history)
    fitted.options["lr"] = 1e30
    rng = np.random.default_rng(1)
    with pytest.raises(TrainingDiverged, match=r"training diverged at step \d+: the"):
        if kind == "classifier":
            x = rng.integers(0, 8, (32, 6))
            fitted.fit(x, (x == 3).any(1).astype(np.int64), max_steps=20, progress=False)
        else:
            fitted.fit(rng.normal(size=200).astype(np.float32) * 1e3, max_steps=20, progress=False)
    assert fitted.history == history
    for k, v in fitted.model.state_dict().items():
        assert torch.equal(v, weights[k]), k


def test_a_fit_refused_part_way_leaves_the_estimator_as_it_was(classifier):
    """Labels of the wrong count: the error comes after fit has read the inputs (and, for
    an unfitted classifier, inferred the vocabulary from them); nothing of it stays."""
    import copy

    x = np.random.default_rng(2).integers(0, 8, (10, 6))
    fresh = SequenceClassifier(**SMALL)
    for estimator in (fresh, copy.deepcopy(classifier)):
        before = copy.deepcopy({k: v for k, v in estimator.__dict__.items() if k != "model"})
        with pytest.raises(ValueError, match="y"):
            estimator.fit(x, np.zeros(7, dtype=np.int64), max_steps=2, progress=False)
        after = {k: v for k, v in estimator.__dict__.items() if k != "model"}
        assert after.keys() == before.keys()
        for key, value in before.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(after[key], value), key
            else:
                assert after[key] == value, key
