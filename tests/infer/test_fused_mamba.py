"""The fused decode steps of Mamba and Mamba-2 (statewise.infer.fused.mamba) against
model.step, over the layer options that change the step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from statewise.infer.fused.mamba import ACTIVATION_CODES
from statewise.kernels.decode import exp_block
from statewise.layers.mamba import CONV_ACTIVATIONS
from tests.infer.fused_check import check_against_step, check_batch_invariant

# dt ~ 1 with A up to -16: exp(dt A) < 1/2 for most channels, so 2 exp(dt A) - 1 < 0
LARGE_DT = {"dt_min": 0.5, "dt_max": 2.0}

OPTIONS = {
    "mamba": [
        {},
        {"negative_eigenvalues": True, **LARGE_DT},
        {"bias": True, "conv_bias": False, "activation": "relu"},
        {"activation": "gelu", "d_conv": 3, "d_state": 5, "dt_rank": 3, "expand": 1.5},
        {"activation": "gelu_new", "d_conv": 2},
        {"activation": "tanh"},
        {"activation": "sigmoid"},
    ],
    "mamba2": [
        {},
        {"head_dim": 8, "n_groups": 2},
        {"n_heads": 4, "n_groups": 4, "negative_eigenvalues": True, **LARGE_DT},
        {"bias": True, "conv_bias": False, "activation": "gelu_new", "d_conv": 2},
        {"dt_limit": (0.01, 0.05), "norm_eps": 0.1, "d_state": 8, "expand": 1.5, "n_heads": 3},
    ],
}
CASES = [(layer, kwargs) for layer, options in OPTIONS.items() for kwargs in options]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(("layer", "kwargs"), CASES, ids=str)
def test_equals_step(layer, kwargs, dtype):
    check_against_step(layer, dtype, layer_kwargs={layer: kwargs})


@pytest.mark.parametrize(
    ("layer", "kwargs"),
    [
        ("mamba", {}),
        ("mamba", {"negative_eigenvalues": True, **LARGE_DT}),
        ("mamba2", {"head_dim": 8, "n_groups": 2}),
        ("mamba2", {"negative_eigenvalues": True, **LARGE_DT}),
    ],
    ids=str,
)
def test_batch_invariant(layer, kwargs):
    check_batch_invariant(layer, layer_kwargs={layer: kwargs})


def test_every_conv_activation_is_fused():
    assert set(ACTIVATION_CODES) == set(CONV_ACTIVATIONS)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=str)
def test_exp_block_is_exp(dtype):
    x = np.concatenate(
        [np.linspace(-800, 800, 20011), np.random.default_rng(0).normal(0, 3, 5000)]
    ).astype(dtype)
    x = np.concatenate([x, np.array([np.nan, 0.0, -0.0], dtype=dtype)])
    out = np.empty_like(x)
    exp_block(x, out, np.empty(x.shape[0], dtype=np.int64))
    with np.errstate(over="ignore", under="ignore"):
        ref = np.exp(x.astype(np.float64)).astype(dtype)  # exp rounded to dtype
    info = np.finfo(dtype)
    normal = (x >= -708) & (x <= 709) & (ref >= info.tiny) & (ref <= info.max)
    assert np.all(np.abs(out[normal] - ref[normal]) <= 2 * info.eps * ref[normal])
    assert np.all(out[x < -708] == 0) and np.all(out[x > 709] == np.inf)
    assert np.isnan(out[-3]) and out[-2] == 1 and out[-1] == 1
