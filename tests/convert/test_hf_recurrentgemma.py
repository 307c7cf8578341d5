"""`statewise convert --from hf` on RecurrentGemma save_pretrained folders, end to end.

A random RecurrentGemmaForCausalLM with a non-default config is saved (safetensors) into
tmp_path, converted through the command line, loaded with ``statewise.load`` and compared
with the peer's logits. Then every kind of bad input must give one clear line on stderr.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="peer package transformers is not installed")

from transformers import RecurrentGemmaConfig, RecurrentGemmaForCausalLM  # noqa: E402

import statewise  # noqa: E402
from statewise.cli import main  # noqa: E402

CONFIGS = {
    "griffin-gqa": dict(
        num_hidden_layers=3,
        vocab_size=70,
        hidden_size=24,
        intermediate_size=52,
        num_attention_heads=4,
        num_key_value_heads=2,
        lru_width=32,
        attention_window_size=4,
        conv1d_width=2,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
        partial_rotary_factor=1.0,
        logits_soft_cap=10.0,
        block_types=["recurrent", "attention", "recurrent"],
        attention_bias=True,
        rms_norm_eps=1e-4,
    ),
    "hawk-untied": dict(
        num_hidden_layers=2,
        vocab_size=33,
        hidden_size=12,
        intermediate_size=36,
        num_attention_heads=3,
        lru_width=18,
        conv1d_width=4,
        logits_soft_cap=20.0,
        block_types=["recurrent"],
        tie_word_embeddings=False,
    ),
}
# float32, the same function: measured differences are ~3e-7 of the logit scale (rounding
# only, see tests/peers/test_transformers_recurrentgemma.py); 5e-6 leaves a wide margin.
REL = 5e-6


def save_peer(name: str, root: Path) -> tuple[RecurrentGemmaForCausalLM, Path]:
    torch.manual_seed(0)
    model = RecurrentGemmaForCausalLM(RecurrentGemmaConfig(**CONFIGS[name])).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    folder = root / f"hf-{name}"
    model.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    return model, folder


def convert(capsys, src: Path, out: Path) -> tuple[int, str]:
    code = main(["convert", "--from", "hf", str(src), "--out", str(out)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_converted_checkpoint_gives_the_peer_logits(name, tmp_path, capsys):
    peer, folder = save_peer(name, tmp_path)
    code, err = convert(capsys, folder, tmp_path / "ckpt")
    assert code == 0, err
    ours = statewise.load(tmp_path / "ckpt")
    ids = torch.randint(0, peer.config.vocab_size, (2, 11), generator=torch.manual_seed(1))
    with torch.no_grad():
        want, got = peer(ids, use_cache=False).logits, ours(ids)
    scale = max(1.0, want.abs().max().item())
    assert (got - want).abs().max().item() <= REL * scale
    # and the converted checkpoint keeps streaming: prefill + step equals the whole forward
    with torch.no_grad():
        logits, state = ours(ids[:, :6], return_state=True)
        step, _ = ours.step(ids[:, 6], state)
    torch.testing.assert_close(logits, got[:, :6], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step, got[:, 6], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    _, folder = save_peer("griffin-gqa", tmp_path_factory.mktemp("peer"))
    return folder


def edited(saved: Path, tmp_path: Path, **changes) -> Path:
    """A copy of the saved folder with config.json keys changed (None deletes a key)."""
    folder = tmp_path / "edited"
    shutil.copytree(saved, folder)
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


BAD_CONFIGS = {
    "exact gelu": (dict(hidden_activation="gelu"), "hidden_activation 'gelu' is not supported"),
    "unknown block": (dict(block_types=["recurrent", "mlp"]), "block_types may hold only"),
    "scaled rope": (
        dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
        "only the default RoPE",
    ),
    "kv heads": (dict(num_key_value_heads=3), "num_key_value_heads=3 must divide"),
    "lru width": (dict(lru_width=30), "must divide lru_width=30"),
    "no soft cap": (dict(logits_soft_cap=0.0), "logits_soft_cap must be > 0"),
    "window": (dict(attention_window_size=0), "attention_window_size must be a positive"),
    "too many rotary features": (
        dict(hidden_size=20, num_attention_heads=4, lru_width=20),  # head width 5, fraction 1
        "rotates 6 features of a head of 5",
    ),
    "fewer layers than weights": (dict(num_hidden_layers=2), "has no place for"),
    "more layers than weights": (dict(num_hidden_layers=4), "lacks tensors"),
    "wrong MLP width": (dict(intermediate_size=60), "has shape"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_input_gives_one_clear_line(case, saved, tmp_path, capsys):
    changes, message = BAD_CONFIGS[case]
    code, err = convert(capsys, edited(saved, tmp_path, **changes), tmp_path / "ckpt")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert message in err, err
    assert not (tmp_path / "ckpt").exists()


def test_missing_tensor_is_named(saved, tmp_path, capsys):
    import safetensors.torch

    folder = edited(saved, tmp_path)
    tensors = safetensors.torch.load_file(str(folder / "model.safetensors"))
    del tensors["model.layers.1.temporal_block.o_proj.bias"]
    safetensors.torch.save_file(tensors, str(folder / "model.safetensors"))
    code, err = convert(capsys, folder, tmp_path / "ckpt")
    assert code == 2 and "backbone.blocks.1.mixer.o_proj.bias" in err, err
