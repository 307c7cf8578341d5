"""statewise convert --from hf for transformers Mamba and Mamba-2 checkpoints.

Each case saves a randomly initialised transformers model with a non-default config
(save_pretrained, safetensors) into tmp_path, converts it with the CLI, loads the
checkpoint with statewise.load and compares logits in float32. Tolerance: 5e-6 relative to
the logit scale; the two sides compute the same float32 sums in other orders (measured at
most ~4e-7, see tests/peers/test_transformers_mamba.py), any wrong term would be O(1).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is not installed")

import safetensors.torch  # noqa: E402
from transformers import (  # noqa: E402
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    MambaModel,
)

import statewise  # noqa: E402
from statewise.cli import main  # noqa: E402
from statewise.convert import ConversionError, convert_hf  # noqa: E402

REL = 5e-6

CASES = {
    "mamba-tied": lambda: MambaForCausalLM(
        MambaConfig(
            vocab_size=53, hidden_size=24, state_size=6, num_hidden_layers=2, expand=3,
            conv_kernel=2, time_step_rank=5, use_bias=True, use_conv_bias=False,
            layer_norm_epsilon=1e-3, hidden_act="gelu",
        )
    ),
    "mamba-untied": lambda: MambaForCausalLM(
        MambaConfig(
            vocab_size=31, hidden_size=20, state_size=3, num_hidden_layers=3, conv_kernel=5,
            tie_word_embeddings=False,
        )
    ),
    "mamba-base-model": lambda: MambaModel(
        MambaConfig(vocab_size=19, hidden_size=16, state_size=4, num_hidden_layers=1)
    ),
    "mamba2-untied": lambda: Mamba2ForCausalLM(
        Mamba2Config(
            vocab_size=47, hidden_size=16, expand=3, num_heads=4, head_dim=12, n_groups=2,
            state_size=7, num_hidden_layers=2, conv_kernel=3, chunk_size=5,
            time_step_limit=(0.001, 0.4), layer_norm_epsilon=1e-4,
        )
    ),
    "mamba2-tied-bias-inf-limit": lambda: Mamba2ForCausalLM(
        Mamba2Config(
            vocab_size=29, hidden_size=8, num_heads=2, head_dim=8, n_groups=1, state_size=5,
            num_hidden_layers=2, use_bias=True, use_conv_bias=False, tie_word_embeddings=True,
            time_step_limit=(0.05, math.inf),
        )
    ),
}  # fmt: skip


@torch.no_grad()
def make(case: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = CASES[case]().eval()
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():  # off the symmetric init (D = 1, zero biases, unit norms)
        p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def save(model: torch.nn.Module, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    return path


def convert(src: Path, out: Path) -> int:
    return main(["convert", "--from", "hf", str(src), "--out", str(out)])


def their_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    if hasattr(out, "logits"):
        return out.logits
    # a base model: its hidden states through the tied embeddings
    return out.last_hidden_state @ model.get_input_embeddings().weight.T


@pytest.mark.parametrize("case", CASES)
def test_converted_checkpoint_gives_the_same_logits(tmp_path, capsys, case):
    theirs = make(case)
    assert convert(save(theirs, tmp_path / "hf"), tmp_path / "ck") == 0
    assert "checkpoint in" in capsys.readouterr().out
    ours = statewise.load(tmp_path / "ck")
    vocab = theirs.config.vocab_size
    ids = torch.randint(0, vocab, (2, 17), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = their_logits(theirs, ids)
        got = ours(ids)
    scale = max(1.0, expected.abs().max().item())
    assert (got - expected).abs().max().item() <= REL * scale
    assert ours.config.layer == theirs.config.model_type
    assert ours.config.tie_embeddings == theirs.config.tie_word_embeddings


def test_half_precision_checkpoint_converts_to_float32(tmp_path):
    theirs = make("mamba2-untied").to(torch.bfloat16)
    assert convert(save(theirs, tmp_path / "hf"), tmp_path / "ck") == 0
    ours = statewise.load(tmp_path / "ck")
    assert ours.embed.weight.dtype == torch.float32
    torch.testing.assert_close(
        ours.embed.weight, theirs.backbone.embeddings.weight.float(), rtol=0, atol=0
    )


# ------------------------------------------------------------------------- errors


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def edit_tensors(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    tensors = safetensors.torch.load_file(str(path))
    edit(tensors)
    safetensors.torch.save_file(tensors, str(path))


@pytest.fixture
def saved_mamba(tmp_path) -> Path:
    return save(make("mamba-untied"), tmp_path / "hf")


@pytest.fixture
def saved_mamba2(tmp_path) -> Path:
    return save(make("mamba2-untied"), tmp_path / "hf")


def test_folder_without_config_json(tmp_path, capsys):
    folder = tmp_path / "weights"
    folder.mkdir()
    assert convert(folder, tmp_path / "ck") != 0
    err = capsys.readouterr().err
    assert "config.json" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ConversionError, match="no config.json"):
        convert_hf(folder, tmp_path / "ck")


def test_unsupported_model_type(saved_mamba, tmp_path, capsys):
    edit_config(saved_mamba, model_type="gpt2")
    assert convert(saved_mamba, tmp_path / "ck") != 0
    err = capsys.readouterr().err
    assert "'gpt2' is not supported" in err and "mamba2" in err
    assert not (tmp_path / "ck").exists()


def test_unsupported_activation(saved_mamba2, tmp_path):
    edit_config(saved_mamba2, hidden_act="mish")
    with pytest.raises(ConversionError, match="hidden_act 'mish' is not supported"):
        convert_hf(saved_mamba2, tmp_path / "ck")


@pytest.mark.parametrize(
    "changes,message",
    [
        (
            dict(state_size=4),
            r"x_proj.weight' has shape \(8, 40\), but config.json implies \(10, 40\)",
        ),
        (dict(conv_kernel=3), "conv1d.weight' has shape"),
        (dict(num_hidden_layers=4), "'layers.3.norm.weight' is missing"),
        (dict(num_hidden_layers=2), "unexpected tensors"),
        (dict(vocab_size=30), "embeddings.weight' has shape"),
    ],
)
def test_config_inconsistent_with_tensors(saved_mamba, tmp_path, changes, message):
    edit_config(saved_mamba, **changes)
    with pytest.raises(ConversionError, match=message):
        convert_hf(saved_mamba, tmp_path / "ck")


def test_inconsistent_mamba2_tensors(saved_mamba2, tmp_path):
    def widen(tensors):
        key = "backbone.layers.1.mixer.dt_bias"
        tensors[key] = torch.cat([tensors[key], tensors[key][:1]])

    edit_tensors(saved_mamba2, widen)
    with pytest.raises(ConversionError, match=r"layers.1.mixer.dt_bias' has shape \(5,\)"):
        convert_hf(saved_mamba2, tmp_path / "ck")


def test_inconsistent_mamba2_config(saved_mamba2, tmp_path):
    edit_config(saved_mamba2, num_heads=5)
    with pytest.raises(ConversionError, match="num_heads \\* head_dim = 60 must equal"):
        convert_hf(saved_mamba2, tmp_path / "ck")
    edit_config(saved_mamba2, num_heads=4, n_groups=3)
    with pytest.raises(ConversionError, match="n_groups = 3 must divide num_heads = 4"):
        convert_hf(saved_mamba2, tmp_path / "ck")


def test_untied_checkpoint_without_head(saved_mamba, tmp_path):
    edit_tensors(saved_mamba, lambda tensors: tensors.pop("lm_head.weight"))
    with pytest.raises(ConversionError, match="no lm_head.weight"):
        convert_hf(saved_mamba, tmp_path / "ck")
