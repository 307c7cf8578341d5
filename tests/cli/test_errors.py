"""Every misuse: one line on stderr, exit code 2, no traceback, nothing overwritten."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from statewise.cli import main
from tests.run_dirs import file_bytes, newest, rewrite


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(code: int, err: str, *words: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A small finished checkpoint to misuse."""
    from tests.conftest import TINY_CHAR

    tmp = tmp_path_factory.mktemp("trained")
    text = tmp / "t.txt"
    text.write_text("a small corpus of text, repeated. " * 300)
    config = tmp / "c.toml"
    config.write_text(TINY_CHAR.format(layer="gru", path=text, steps=5, checkpoint_every=5))
    assert main(["train", str(config), "--out", str(tmp / "ckpt"), "--no-progress"]) == 0
    return tmp / "ckpt"


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "override,words",
    [
        ("--model.no_such_key=1", ["unknown key model.no_such_key"]),
        ("--model.d_model=wide", ["model.d_model must be int", "str"]),
        ("--train.lr=true", ["train.lr must be float"]),
        ("--model.layer=no_such_layer", ["unknown layer 'no_such_layer'"]),
        ("--extra.key=1", ["unknown section [extra]"]),
        ("--data.task=images", ["data.task must be one of"]),
        ("--train.steps=0", ["train.steps must be positive"]),
        ("--model.layer_kwargs.foo=1", ["model.layer_kwargs.foo", "has no argument 'foo'"]),
    ],
)
def test_bad_config_values(capsys, tmp_path, tiny_config, override, words):
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys, "train", str(tiny_config()), "--out", str(out), override, "--no-progress"
    )
    assert_usage_error(code, err, *words)
    assert not out.exists()


def test_unknown_key_in_file_and_bad_toml(capsys, tmp_path):
    bad_key = tmp_path / "a.toml"
    bad_key.write_text("[train]\nstepz = 3\n")
    assert_usage_error(*run_cli(capsys, "train", str(bad_key))[::2], "unknown key train.stepz")
    bad_toml = tmp_path / "b.toml"
    bad_toml.write_text("[train\nsteps = 3\n")
    assert_usage_error(*run_cli(capsys, "train", str(bad_toml))[::2], "not valid TOML")
    assert_usage_error(*run_cli(capsys, "train", str(tmp_path / "missing.toml"))[::2], "not found")
    assert not (Path("runs") / "a").exists()


def test_layer_kwargs_wrong_name(capsys, tmp_path, tiny_config):
    code, _, err = run_cli(
        capsys,
        "train",
        str(tiny_config(layer="gru")),
        "--out",
        str(tmp_path / "o"),
        "--model.layer_kwargs={ nope = 3 }",
    )
    assert_usage_error(code, err, "gru", "nope")


def test_missing_text_file(capsys, tmp_path, tiny_config):
    code, _, err = run_cli(
        capsys,
        "train",
        str(tiny_config()),
        "--out",
        str(tmp_path / "o"),
        f"--data.path={tmp_path / 'nope.txt'}",
    )
    assert_usage_error(code, err, "nope.txt", "not a readable file")


# -------------------------------------------------------------- checkpoint


def test_train_refuses_to_overwrite_a_checkpoint(capsys, trained, tiny_config):
    before = file_bytes(trained)
    code, _, err = run_cli(capsys, "train", str(tiny_config()), "--out", str(trained))
    assert_usage_error(code, err, "already holds a checkpoint", "--resume auto")
    assert file_bytes(trained) == before


def test_train_refuses_a_foreign_directory(capsys, tmp_path, tiny_config):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = run_cli(capsys, "train", str(tiny_config()), "--out", str(out))
    assert_usage_error(code, err, "not a statewise run directory")
    assert (out / "notes.txt").read_text() == "keep me"
    code, _, err = run_cli(capsys, "train", str(tiny_config()), "--resume", str(out))
    assert_usage_error(code, err, "not a statewise checkpoint")


def test_resume_with_another_model_is_refused(capsys, trained, tiny_config):
    before = file_bytes(trained)
    code, _, err = run_cli(
        capsys, "train", str(tiny_config(layer="lstm")), "--out", str(trained), "--resume", "auto"
    )
    assert_usage_error(code, err, "another [model] or [data] config")
    assert file_bytes(trained) == before


@pytest.mark.parametrize("command", ["eval", "generate"])
def test_missing_incomplete_and_mismatched_checkpoints(capsys, tmp_path, trained, command):
    extra = ["--prompt", "a"] if command == "generate" else []
    code, _, err = run_cli(capsys, command, "--checkpoint", str(tmp_path / "none"), *extra)
    assert_usage_error(code, err, "does not exist")

    incomplete = tmp_path / "incomplete"
    shutil.copytree(trained, incomplete)
    for saved in (incomplete / "checkpoints").iterdir():
        (saved / "model.safetensors").unlink()
    code, _, err = run_cli(capsys, command, "--checkpoint", str(incomplete), *extra)
    assert_usage_error(code, err, "model.safetensors is missing")

    other = tmp_path / "other"
    shutil.copytree(trained, other)
    config = newest(other) / "config.toml"
    rewrite(config.parent, "config.toml", config.read_bytes().replace(b'"gru"', b'"lstm"'))
    before = file_bytes(other)
    code, _, err = run_cli(capsys, command, "--checkpoint", str(other), *extra)
    assert_usage_error(code, err, "another layer type")
    assert file_bytes(other) == before


def test_generate_argument_errors(capsys, trained):
    ckpt = str(trained)
    assert_usage_error(
        *run_cli(capsys, "generate", "--checkpoint", ckpt, "--prompt", "")[::2], "prompt is empty"
    )
    for flag, value, word in [
        ("--temperature", "-1", "temperature"),
        ("--top-k", "0", "top_k"),
        ("--top-p", "1.5", "top_p"),
        ("--max-new-tokens", "-3", "max-new-tokens"),
    ]:
        code, _, err = run_cli(
            capsys, "generate", "--checkpoint", ckpt, "--prompt", "a", flag, value
        )
        assert_usage_error(code, err, word)


# ------------------------------------------------------------- the parser


@pytest.mark.parametrize(
    "argv,word",
    [
        ([], "required"),
        (["fly"], "invalid choice"),
        (["models", "--colour"], "unrecognized"),
        (["eval"], "--checkpoint"),
        (["generate", "--checkpoint", "x"], "--prompt"),
        (["generate", "--checkpoint", "x", "--prompt", "a", "--top-k", "many"], "invalid int"),
        (["train", "c.toml", "stray"], "unrecognized argument"),
        (["train", "c.toml", "--train.steps"], "needs a value"),
    ],
)
def test_cli_misuse(capsys, argv, word):
    code, _, err = run_cli(capsys, *argv)
    assert_usage_error(code, err, word)


def test_misuse_as_a_real_process_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "statewise", "eval", "--checkpoint", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "does not exist" in proc.stderr
