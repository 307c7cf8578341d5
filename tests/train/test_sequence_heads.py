"""``statewise train`` and ``eval`` for the seq2seq, recogniser and tagger heads: exact
resume, gradient accumulation equal to the whole batch, validation scores equal to ones
computed another way (strings decoded by the vocabulary), clear errors for configs that do
not fit, and the example configs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from statewise.cli import main
from statewise.errors import ConfigError
from statewise.models import build_model
from statewise.models.decoding import greedy_decode
from statewise.tasks.config import build_task
from statewise.tasks.transduction import make_pairs
from statewise.train import checkpoint
from statewise.train.config import config_from_dict, load_config
from statewise.train.objectives import objective_for
from statewise.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TRAIN = dict(steps=6, batch_size=8, warmup_steps=2, eval_every=3, eval_batches=1, log_every=3)
STACK = dict(layer="lstm", d_model=16, n_layers=1, mlp_ratio=0.0)
RUNS = {
    "seq2seq": dict(
        model=dict(head="seq2seq", vocab_size=13, head_kwargs={"attention": "luong"}),
        data=dict(task="reverse", lengths=[2, 3, 4]),
    ),
    "ctc": dict(
        model=dict(head="ctc", vocab_size=0, input_dim=8, n_classes=11),
        data=dict(task="digit_lines"),
    ),
    "transducer": dict(
        model=dict(
            head="transducer",
            vocab_size=0,
            input_dim=8,
            n_classes=11,
            head_kwargs={"bidirectional": True},
        ),
        data=dict(task="digit_lines"),
    ),
    "tagger": dict(
        model=dict(head="tagger", vocab_size=99, n_classes=7, layer="mingru"),
        data=dict(task="python_tags", seq_len=32),
    ),
}


def run_config(head: str, **train: object):
    raw = copy.deepcopy(RUNS[head])
    raw["model"] = {**STACK, **raw["model"]}
    raw["train"] = {**TRAIN, "checkpoint_every": 3, **train}
    return config_from_dict(raw)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return checkpoint.read(out).model().state_dict()


@pytest.mark.parametrize("head", list(RUNS))
def test_a_resumed_run_ends_with_the_weights_of_one_never_stopped(tmp_path, head):
    whole = train(run_config(head), tmp_path / "whole", progress=False)
    train(run_config(head, steps=3), tmp_path / "parts", progress=False)
    resumed = train(run_config(head), tmp_path / "parts", resume=True, progress=False)
    timeless = ("seconds", "tokens_per_s")  # the clock differs between the runs
    assert {k: v for k, v in resumed.items() if k not in timeless} == {
        k: v for k, v in whole.items() if k not in timeless
    }
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "parts")
    assert all(torch.equal(a[k], b[k]) for k in a)
    metric = {"seq2seq": "exact_match", "ctc": "cer", "transducer": "cer", "tagger": "accuracy"}
    assert 0.0 <= whole[f"val_{metric[head]}"] <= 1.0


@pytest.mark.parametrize("head", list(RUNS))
def test_gradient_accumulation_gives_the_whole_batch_step(tmp_path, head):
    # micro-batches of 3 + 3 + 2 rows: the summed losses over the batch's units must give the
    # gradient of the 8-row batch (dropout is off, so only float rounding differs)
    train(run_config(head, steps=1), tmp_path / "one", progress=False)
    train(run_config(head, steps=1, grad_accum=3), tmp_path / "three", progress=False)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "three")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_eval_scores_a_seq2seq_checkpoint_as_strings_decoded_another_way(tmp_path, capsys):
    config = run_config("seq2seq", steps=40)
    train(config, tmp_path / "run", progress=False)
    capsys.readouterr()  # what training printed
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    # the validation pairs again, from make_pairs, decoded to strings by the vocabulary
    task = build_task(config.data, config.train.seed)
    pairs = make_pairs("reverse", config.train.batch_size, (2, 3, 4), -1)
    source, _ = task.batch(pairs)
    model = checkpoint.read(tmp_path / "run").model().eval()
    decoded, _ = greedy_decode(model, source, source != 0, 20)
    got = [task.vocab.decode(ids) for ids in decoded]
    assert printed["val_exact_match"] == sum(g == t for g, (_, t) in zip(got, pairs)) / len(pairs)
    assert printed["step"] == 40 and printed["task"] == "reverse"


def test_eval_reports_the_recognisers_error_rate_at_test_lengths(tmp_path, capsys):
    train(run_config("ctc", steps=1), tmp_path / "run", progress=False)
    capsys.readouterr()  # what training printed
    argv = ["eval", "--checkpoint", str(tmp_path / "run"), "--test-lengths", "4,6"]
    assert main([*argv, "--test-batches", "1", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["test_cer"]) == {"4", "6"}
    assert printed["test_cer_mean"] == pytest.approx(sum(printed["test_cer"].values()) / 2)
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--dynamic"]) == 2
    assert "--dynamic is for language models" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("head", "change", "message"),
    [
        ("tagger", {"data": {"task": "digit_lines"}}, "needs model.head one of ('ctc'"),
        ("seq2seq", {"model": {"vocab_size": 20}}, "model.vocab_size must be 13"),
        ("ctc", {"model": {"n_classes": 12}}, "model.n_classes must be 11"),
        ("ctc", {"model": {"input_dim": 7}}, "model.input_dim must be 8"),
        ("tagger", {"train": {"state_passing": True}}, "train.state_passing: options of"),
        ("seq2seq", {"train": {"label_smoothing": 0.1}}, "train.label_smoothing: options of"),
    ],
)
def test_a_config_that_does_not_fit_its_task_is_refused_before_training(
    tmp_path, head, change, message
):
    raw = copy.deepcopy(RUNS[head])
    raw["model"] = {**STACK, **raw["model"], **change.get("model", {})}
    raw["data"] = {**raw["data"], **change.get("data", {})}
    raw["train"] = {**TRAIN, **change.get("train", {})}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        train(config_from_dict(raw), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"head": "seq2seq", "head_kwargs": {"attn": "luong"}}, "has no argument 'attn'"),
        ({"head": "seq2seq", "head_kwargs": {"attention": "dot"}}, "attention must be one of"),
        ({"head": "tagger", "n_classes": 3, "head_kwargs": {"crf": 1}}, "crf must be bool"),
        ({"head": "seq2seq", "head_kwargs": {"decoder": "lstmm"}}, "not a registered layer"),
        ({"head": "ctc", "n_classes": 11}, "model.vocab_size = 0 and model.input_dim"),
        ({"head": "lm", "head_kwargs": {"crf": True}}, "head 'lm' takes none"),
    ],
)
def test_head_kwargs_are_checked_with_the_config(model, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"model": model})


@pytest.mark.parametrize(
    "name",
    [
        "reverse_seq2seq.toml",
        "date_seq2seq.toml",
        "digit_lines_ctc.toml",
        "digit_lines_transducer.toml",
        "python_tags_crf.toml",
    ],
)
def test_example_configs_build_a_model_that_fits_their_task(name):
    config = load_config(EXAMPLES / name)
    task = build_task(config.data, config.train.seed)
    objective = objective_for(config.model, task)  # ConfigError if they do not fit
    model = build_model(config.model)
    batch = task.train_batch(0, 2)
    assert torch.isfinite(model.loss(*batch, reduction="sum")).item()
    assert objective.units(batch) > 0


@pytest.mark.parametrize("head", list(RUNS))
def test_a_summed_loss_is_the_mean_times_the_units(head):
    config = run_config(head)
    task = build_task(config.data, 0)
    torch.manual_seed(0)
    model = build_model(config.model).eval()
    batch = task.train_batch(0, 5)
    units = objective_for(config.model, task).units(batch)
    mean, total = model.loss(*batch), model.loss(*batch, reduction="sum")
    torch.testing.assert_close(total, mean * units)
