"""Errors are classified: bad input is one line and exit 2, a diverged run exit 3, and
anything else is a bug: exit 1 with the traceback and a line saying so."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from statewise import cli, errors
from statewise.cli import main
from tests.run_dirs import newest, rewrite


def one_line_error(capsys, argv: list[str], *words: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


def test_input_error_types_are_value_or_type_errors():
    for cls in (
        errors.ArgumentError,
        errors.ConfigError,
        errors.CheckpointError,
        errors.DataError,
        errors.NonFiniteError,
    ):
        assert issubclass(cls, errors.InputError) and issubclass(cls, ValueError)
    assert issubclass(errors.ArgumentTypeError, TypeError)
    assert issubclass(errors.RunLockedError, OSError)
    assert not issubclass(errors.TrainingDiverged, errors.InputError)


def test_a_bug_is_exit_1_with_the_traceback(capsys, monkeypatch):
    """Today's defect: a ValueError from a bug read as a usage error (exit 2)."""

    def broken(args, extra):
        raise ValueError("an internal invariant failed")

    monkeypatch.setitem(cli.COMMANDS, "models", broken)
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: an internal invariant failed" in err
    assert "this is a bug in statewise" in err


def hf_folder(tmp_path: Path, config: object, weights: bytes) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_convert_a_corrupt_safetensors_file(capsys, tmp_path):
    folder = hf_folder(tmp_path, {"model_type": "mamba"}, b"\x10\x00\x00\x00garbage")
    one_line_error(
        capsys,
        ["convert", "--from", "hf", str(folder), "--out", str(tmp_path / "out")],
        "cannot be read as safetensors",
    )
    assert not (tmp_path / "out").exists()


def test_convert_a_config_json_holding_a_list(capsys, tmp_path):
    folder = hf_folder(tmp_path, [1, 2], b"")
    one_line_error(
        capsys,
        ["convert", "--from", "hf", str(folder), "--out", str(tmp_path / "out")],
        "holds a list, not an object",
    )


@pytest.mark.parametrize(
    "state, word",
    [({"tokens": 3}, "no step number"), ([1, 2], "no step number"), (None, "cannot be read")],
)
@pytest.mark.parametrize("command", ["eval", "train"])
def test_a_train_state_without_step(capsys, tmp_path, tiny_config, state, word, command):
    out = tmp_path / "run"
    config = str(tiny_config(steps=5, checkpoint_every=5))
    assert main(["train", config, "--out", str(out), "--no-progress"]) == 0
    if state is None:
        data = b"not a torch file"
    else:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
    rewrite(newest(out), "train_state.pt", data)
    if command == "eval":
        argv = ["eval", "--checkpoint", str(out)]
    else:
        argv = ["train", config, "--out", str(out), "--resume", "auto", "--train.steps=10"]
    one_line_error(capsys, argv, "train_state.pt", word)


def test_an_unknown_layer_and_bad_layer_kwargs_stay_exit_2(capsys, tiny_config, tmp_path):
    out = str(tmp_path / "out")
    config = str(tiny_config())
    one_line_error(capsys, ["train", config, "--out", out, "--model.layer=nope"], "nope")
    one_line_error(
        capsys,
        ["train", config, "--out", out, "--model.layer_kwargs.expand=-1"],
        "expand must be a positive finite number",
    )
