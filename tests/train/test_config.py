from __future__ import annotations

import pytest

from statewise.train.config import ConfigError, RunConfig, config_from_dict, load_config
from statewise.train.optim import lr_at


def test_round_trip_through_toml(tmp_path):
    config = config_from_dict(
        {
            "model": {"layer": "gru", "d_model": 32, "layer_kwargs": {"hidden_size": 16}},
            "train": {"lr": 1, "steps": 7},
        }
    )
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    path = tmp_path / "c.toml"
    path.write_text(config.to_toml())
    assert load_config(path) == config


def test_overrides_parse_as_toml_values(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(RunConfig().to_toml())
    config = load_config(
        path,
        [
            "train.lr=1e-4",
            "model.layer=lstm",
            "train.betas=[0.8, 0.9]",
            "data.path=/some/file.txt",
            "model.tie_embeddings=false",
            "model.layer_kwargs.hidden_size=8",
        ],
    )
    assert config.train.lr == 1e-4 and config.model.layer == "lstm"
    assert config.train.betas == [0.8, 0.9] and config.data.path == "/some/file.txt"
    assert config.model.tie_embeddings is False
    assert config.model.layer_kwargs == {"hidden_size": 8}


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"train": {"steps": 1.5}}, "train.steps must be int"),
        ({"train": {"steps": True}}, "train.steps must be int"),
        ({"train": {"betas": [0.9]}}, "train.betas must be two numbers"),
        ({"model": {"head": "vision"}}, "model.head must be one of"),
        ({"model": {"layer": 3}}, "model.layer must be str"),
        ({"model": "x"}, "[model] must be a table"),
    ],
)
def test_invalid_configs(raw, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(raw)


def test_schedule_warms_up_then_decays_to_the_floor():
    config = RunConfig().train
    config.steps, config.warmup_steps, config.lr, config.min_lr_ratio = 100, 10, 1.0, 0.1
    lrs = [lr_at(s, config) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_at(100, config) == pytest.approx(0.1)


def test_weight_decay_skips_vectors_and_tagged_parameters():
    import torch

    from statewise.train.optim import make_optimizer

    model = torch.nn.Module()
    model.matrix = torch.nn.Parameter(torch.zeros(3, 3))
    model.vector = torch.nn.Parameter(torch.zeros(3))
    model.dynamics = torch.nn.Parameter(torch.zeros(3, 3))
    model.dynamics._optim = {"weight_decay": 0.0}
    groups = make_optimizer(model, RunConfig().train).param_groups
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model.matrix)}


@pytest.mark.parametrize(
    "layer, undecayed",
    [
        ("mamba", {"A_log"}),
        ("s4d", {"log_A_real", "A_imag", "B"}),
        ("rglru", {"rg_lru.input_gate_bias", "rg_lru.recurrent_gate_bias"}),
        (
            "rwkv",
            {
                "att.time_maa_w1",
                "att.time_maa_w2",
                "att.time_decay_w1",
                "att.time_decay_w2",
                "att.time_faaaa",
            },
        ),
    ],
)
def test_layers_keep_their_dynamics_out_of_weight_decay(layer, undecayed):
    """The references train these without weight decay (Mamba's A_log is _no_weight_decay;
    RWKV-LM's time_* groups); decaying A_log pulls every decay rate towards exp(0) = 1."""
    from statewise.layers.registry import get
    from statewise.train.optim import make_optimizer

    mixer = get(layer, 64)
    groups = make_optimizer(mixer, RunConfig().train).param_groups
    names = {id(p): n for n, p in mixer.named_parameters()}
    kept = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    matrices_kept = {n for n in kept if mixer.get_parameter(n).dim() >= 2}
    assert matrices_kept == undecayed
