"""Every float option rejects NaN and inf: configs, CLI flags and API arguments."""

from __future__ import annotations

import dataclasses
import math
import typing

import numpy as np
import pytest
import torch

from statewise import Forecaster, LanguageModel, ModelConfig, SequenceClassifier, layers
from statewise.cli import main
from statewise.errors import ArgumentError, ConfigError
from statewise.layers.checks import positive_number
from statewise.models.sampling import check_sampling, sample_next
from statewise.train.config import SECTIONS, config_from_dict

NON_FINITE = [math.nan, math.inf, -math.inf]


def float_keys() -> list[tuple[str, str]]:
    """(section, key) of every float field (or list of floats) of the run config."""
    keys = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            args = typing.get_args(hint)
            if (
                hint is float
                or float in args
                or (typing.get_origin(hint) is list and args == (float,))
            ):
                keys.append((section, f.name))
    return keys


def test_the_config_has_float_keys_to_check():
    found = float_keys()
    assert ("train", "lr") in found and ("train", "grad_clip") in found
    assert ("train", "budget_s") in found and len(found) >= 10


@pytest.mark.parametrize("section, key", float_keys())
@pytest.mark.parametrize("value", NON_FINITE)
def test_every_float_config_key_rejects_non_finite(section, key, value):
    default = getattr(SECTIONS[section](), key)
    raw_value = [value] * len(default) if isinstance(default, list) else value
    with pytest.raises(ConfigError, match=rf"{section}\.{key} must be a finite number"):
        config_from_dict({section: {key: raw_value}})


def test_layer_kwargs_reject_nan_and_leave_inf_to_the_layer():
    with pytest.raises(ConfigError, match="model.layer_kwargs.r_min must be a finite"):
        config_from_dict({"model": {"layer": "lru", "layer_kwargs": {"r_min": math.nan}}})
    with pytest.raises(ArgumentError):  # lru refuses r_max = inf itself
        LanguageModel(ModelConfig(layer="lru", d_model=8, layer_kwargs={"r_max": math.inf}))
    # mamba2 gives dt_limit = (0, inf) a meaning: no upper limit
    config = config_from_dict(
        {"model": {"layer": "mamba2", "layer_kwargs": {"dt_limit": [0.0, math.inf]}}}
    )
    assert config.model.layer_kwargs["dt_limit"] == [0.0, math.inf]


@pytest.mark.parametrize("value", NON_FINITE)
def test_layer_arguments_reject_non_finite(value):
    with pytest.raises(ArgumentError, match="finite"):
        positive_number("expand", value)
    with pytest.raises(ArgumentError):
        layers.get("mamba", d_model=8, expand=value)


@pytest.mark.parametrize(
    "temperature, top_k, top_p, word",
    [
        (math.nan, None, None, "temperature"),
        (math.inf, None, None, "temperature"),
        (1.0, None, math.nan, "top_p"),
        (1.0, 1.5, None, "top_k"),
    ],
)
def test_sampling_settings(temperature, top_k, top_p, word):
    with pytest.raises(ArgumentError, match=word):
        check_sampling(temperature, top_k, top_p)


def test_a_tiny_temperature_is_a_draw_among_the_maxima():
    """1e-45 used to reach torch.multinomial as inf - inf = NaN probabilities."""
    logits = torch.randn(64, 50) * 10
    for temperature in (1e-45, 1e-30, 1e-8):
        assert torch.equal(sample_next(logits, temperature), logits.argmax(-1))
    tied = torch.tensor([[1.0, 5.0, 5.0, 0.0]])
    draws = {sample_next(tied, 1e-45).item() for _ in range(50)}
    assert draws == {1, 2}


def test_generate_api_rejects_non_finite():
    model = LanguageModel(ModelConfig(layer="gru", d_model=8, n_layers=1, vocab_size=16))
    with pytest.raises(ArgumentError, match="temperature"):
        model.generate(torch.tensor([[1, 2]]), 3, temperature=math.nan)


@pytest.mark.parametrize("flag, value", [("--temperature", "nan"), ("--top-p", "inf")])
def test_generate_flags(capsys, tmp_path, flag, value):
    code = main(["generate", "--checkpoint", str(tmp_path), "--prompt", "a", flag, value])
    err = capsys.readouterr().err
    assert code == 2 and "must be a finite number" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_arena_budget(capsys, tmp_path, value):
    code = main(["arena", "--budget-s", value, "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and "--budget-s must be positive and finite" in err
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_train_override(capsys, tiny_config, tmp_path, value):
    out = tmp_path / "out"
    code = main(["train", str(tiny_config()), "--out", str(out), f"--train.lr={value}"])
    err = capsys.readouterr().err
    assert code == 2 and "train.lr must be a finite number" in err
    assert not out.exists()


@pytest.mark.parametrize("name", ["budget_s", "max_steps", "epochs"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_fit_limits(name, value):
    series = np.sin(np.arange(64) / 4).astype(np.float32)
    with pytest.raises(ArgumentError, match=name):
        Forecaster(layer="gru", d_model=8, input_len=8, horizon=2).fit(series, **{name: value})
    x = np.zeros((4, 3), dtype=np.int64)
    with pytest.raises(ArgumentError, match=name):
        SequenceClassifier(layer="gru", d_model=8).fit(
            x, np.zeros(4, dtype=np.int64), **{name: value}
        )
