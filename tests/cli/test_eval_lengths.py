"""`statewise eval --test-lengths`: accuracy on the length-generalisation split."""

from __future__ import annotations

import json

import pytest
import torch

from statewise.cli import main
from statewise.errors import NonFiniteError
from statewise.tasks.config import DataConfig, build_task
from statewise.train import checkpoint
from statewise.train.evaluate import evaluate_lengths, mean_over_lengths

PARITY = """
[model]
layer = "gru"
d_model = 8
n_layers = 1
mlp_ratio = 0.0

[data]
task = "parity"
train_max_len = 6

[train]
steps = 4
batch_size = 8
eval_every = 4
eval_batches = 1
checkpoint_every = 4
log_every = 2
"""


def _train(tmp_path, toml: str):
    """A 4-step run of the config ``toml``; its run directory."""
    config = tmp_path / "parity.toml"
    config.write_text(toml)
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture
def parity_run(tmp_path):
    return _train(tmp_path, PARITY)


def test_eval_reports_accuracy_at_each_test_length(parity_run, capsys):
    capsys.readouterr()
    argv = ["eval", "--checkpoint", str(parity_run), "--json", "--test-lengths", "7,12"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["test_accuracy"]) == {"7", "12"}
    # the same numbers as scoring the task's own test batches by hand
    model = checkpoint.load(str(parity_run))
    task = build_task(DataConfig(task="parity", train_max_len=6), 0)
    for length in (7, 12):
        correct = total = 0
        with torch.no_grad():
            for inputs, targets in task.test_batches(8, 4, length):
                real = targets >= 0
                correct += int((model(inputs).argmax(-1) == targets)[real].sum())
                total += int(real.sum())
        assert result["test_accuracy"][str(length)] == pytest.approx(correct / total)
    mean = sum(result["test_accuracy"].values()) / 2
    assert result["test_accuracy_mean"] == pytest.approx(mean)


@pytest.mark.parametrize("lengths", ["", "7,x", "0,5"])
def test_bad_test_lengths_are_one_line_errors(parity_run, capsys, lengths):
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(parity_run), "--test-lengths", lengths]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("statewise eval: --test-lengths") and "\n" not in err


def test_a_task_without_a_test_split_is_refused():
    class NoSplit:
        metric = "accuracy"

    with pytest.raises(ValueError, match="no test split"):
        evaluate_lengths(torch.nn.Identity(), NoSplit(), [5], 2, 1)


def test_val_batches_scores_that_many_validation_batches(parity_run, capsys):
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(parity_run), "--json", "--val-batches", "5"]) == 0
    result = json.loads(capsys.readouterr().out)
    model = checkpoint.load(str(parity_run))
    task = build_task(DataConfig(task="parity", train_max_len=6), 0)
    correct = total = 0
    with torch.no_grad():
        for inputs, targets in task.eval_batches(8, 5):
            real = targets >= 0
            correct += int((model(inputs).argmax(-1) == targets)[real].sum())
            total += int(real.sum())
    assert result["val_accuracy"] == pytest.approx(correct / total)


@pytest.mark.parametrize("flag", ["--val-batches", "--test-batches"])
def test_batch_counts_below_one_are_one_line_errors(parity_run, capsys, flag):
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(parity_run), flag, "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"statewise eval: {flag}") and "\n" not in err


OVERFLOWING = PARITY.replace('layer = "gru"', 'layer = "titans"\nlayer_kwargs = {max_lr = 1.0}')


def _make_memory_diverge(model: torch.nn.Module) -> None:
    """Titans' memory as gradient descent that cannot settle: step max_lr = 1, momentum
    1, no forgetting, values x10. Finite over a few tokens, it overflows float32 over a
    few hundred: what a model trained on short sequences can do on long ones."""
    mixer = model.backbone.blocks[0].mixer
    heads = mixer.n_heads
    with torch.no_grad():
        mixer.rate_proj.weight.zero_()
        mixer.rate_proj.bias[: 2 * heads] = 20.0  # theta = max_lr, eta = 1
        mixer.rate_proj.bias[2 * heads :] = -20.0  # alpha = 0
        mixer.v_proj.weight.mul_(10.0)


@pytest.fixture
def overflowing_run(tmp_path):
    out = _train(tmp_path, OVERFLOWING)
    saved = checkpoint.read(out)
    model = saved.model()
    _make_memory_diverge(model)
    checkpoint.save(out, saved.config(), model, {"step": saved.step + 1}, [])
    return out


def test_a_length_where_the_model_overflows_scores_none(overflowing_run):
    model = checkpoint.load(str(overflowing_run))
    task = build_task(DataConfig(task="parity", train_max_len=6), 0)
    long_inputs, _ = next(iter(task.test_batches(8, 1, 256)))
    with pytest.raises(NonFiniteError), torch.no_grad():
        model(long_inputs)  # the model itself refuses its overflowed output
    scores = evaluate_lengths(model, task, [7, 256], 8, 2)
    assert scores[256] is None and 0.0 <= scores[7] <= 1.0
    assert mean_over_lengths(scores) == pytest.approx(scores[7] / 2)


def test_eval_reports_an_overflowed_length_and_goes_on(overflowing_run, capsys):
    capsys.readouterr()
    argv = ["eval", "--checkpoint", str(overflowing_run), "--test-lengths", "7,256"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_accuracy"]["256"] is None
    assert result["test_accuracy_mean"] == pytest.approx(result["test_accuracy"]["7"] / 2)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "at length 256: none: the activations overflowed" in out
    assert "(a length that overflowed counts 0)" in out


def test_no_answer_is_each_metric_of_an_empty_answer():
    """A length that overflowed counts as an empty answer would score: 0 for the
    accuracies, 1 for the character error rate (lower is better: counting 0 there would
    make the overflow the best score)."""
    from statewise.tasks.seq_metrics import character_error_rate, exact_match
    from statewise.train import objectives

    want, empty = [[3, 1, 4], [1, 5]], [[], []]
    assert objectives.RecognizerObjective.no_answer == character_error_rate(want, empty)
    assert objectives.Seq2SeqObjective.no_answer == exact_match(want, empty)
    assert objectives.LanguageModelObjective.no_answer == 0.0  # no token right
    assert mean_over_lengths({7: 0.3, 256: None}, no_answer=1.0) == pytest.approx(0.65)
