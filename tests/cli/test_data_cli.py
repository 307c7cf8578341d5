"""statewise tokenizer train, data prepare, then train / eval / generate on a subword
tokenizer through the command line, as a user runs them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from statewise.cli import main
from statewise.tasks.tokenizer import load_tokenizer
from tests.conftest import SHARED_DATA

pytest.importorskip("tokenizers")

CONFIG = """
[model]
layer = "mingru"
d_model = 16
n_layers = 1
vocab_size = {vocab}

[data]
task = "lm"
seq_len = 16
path = "{path}"

[train]
steps = 2
batch_size = 4
eval_every = 2
eval_batches = 1
checkpoint_every = 2
"""


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    source = SHARED_DATA / "tinyshakespeare.txt"
    text = source.read_text()[:30_000] if source.exists() else "To be, or not to be. " * 1500
    pieces = text.split("\n\n")
    for i in range(0, len(pieces), 20):
        (root / f"scene{i:04d}.txt").write_text("\n\n".join(pieces[i : i + 20]))
    return root


def test_tokenizer_prepare_train_eval_generate(capsys, tmp_path, corpus):
    tok_dir, prep = tmp_path / "tok", tmp_path / "prep"
    code, out, _ = run(
        capsys, *f"tokenizer train {corpus} --vocab-size 300 --out {tok_dir}".split()
    )
    assert code == 0 and "byte-level BPE" in out
    tok = load_tokenizer(tmp_path / "tok")
    code, out, err = run(
        capsys, *f"data prepare {corpus} --tokenizer {tok_dir} --out {prep}".split()
    )
    assert code == 0, err
    header = json.loads((tmp_path / "prep" / "header.json").read_text())
    assert header["tokenizer"] == tok.identity()
    assert header["n_documents"] == len(list(corpus.iterdir()))

    config = tmp_path / "lm.toml"
    config.write_text(CONFIG.format(vocab=256, path=tmp_path / "prep"))
    code, _, err = run(capsys, "train", str(config), "--out", str(tmp_path / "small"))
    assert code == 2 and "model.vocab_size 256" in err  # smaller than the tokenizer's

    config.write_text(CONFIG.format(vocab=tok.vocab_size, path=tmp_path / "prep"))
    out_dir = tmp_path / "run"
    flags = f"train {config} --out {out_dir} --no-progress --train.state_passing=true"
    code, _, err = run(capsys, *flags.split())
    assert code == 0, err
    assert load_tokenizer(out_dir / "tokenizer").identity() == tok.identity()

    moved = tmp_path / "moved"  # the run directory moves as one directory
    os.rename(out_dir, moved)
    os.rename(tmp_path / "tok", tmp_path / "tok_gone")
    generate = f"generate --checkpoint {moved} --prompt ROMEO: --max-new-tokens 12 --temperature 0"
    code, out, err = run(capsys, *generate.split())
    assert code == 0, err
    assert out.startswith("ROMEO:")
    code, streamed, _ = run(capsys, *generate.split(), "--stream")
    assert streamed == out  # streaming prints the same text
    code, out, err = run(capsys, "eval", "--checkpoint", str(moved), "--json")
    assert code == 0, err
    assert json.loads(out)["task"] == "lm"


def test_prepare_refuses_a_non_empty_out(capsys, tmp_path, corpus):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    code, _, err = run(capsys, "data", "prepare", str(corpus), "--out", str(tmp_path / "full"))
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "full" / "x").read_text() == "keep"


def test_generate_refuses_a_checkpoint_of_no_text(capsys, tmp_path):
    config = tmp_path / "m.toml"
    config.write_text(
        '[model]\nlayer = "mingru"\nd_model = 8\nn_layers = 1\nvocab_size = 64\n'
        '[data]\ntask = "mqar"\nseq_len = 16\nvocab_size = 64\nn_pairs = 2\n'
        "[train]\nsteps = 1\nbatch_size = 2\neval_batches = 1\n"
    )
    assert run(capsys, "train", str(config), "--out", str(tmp_path / "r"), "--no-progress")[0] == 0
    code, _, err = run(capsys, "generate", "--checkpoint", str(tmp_path / "r"), "--prompt", "a")
    assert code == 2 and "not on text" in err
