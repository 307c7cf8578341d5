"""The fused decode step of the classic cells (statewise.infer.fused.cells) against their
``step``: lstm, gru and rnn, with one head (torch.nn's W_hh) and head-wise W_hh, and with
hidden_size != d_model (out_proj)."""

from __future__ import annotations

import pytest
import torch

from tests.infer.fused_check import check_against_step, check_batch_invariant

LAYERS = ["lstm", "gru", "rnn"]
HEADWISE = {"hidden_size": 48, "n_heads": 4}
OPTIONS = [
    {},
    {"n_heads": 2},
    {"hidden_size": 48},
    HEADWISE,
    {"n_heads": 2, "weight_drop": 0.5},  # eval mode: nothing is dropped
]


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("layer", LAYERS)
def test_equals_step_float64(layer, options):
    check_against_step(layer, torch.float64, layer_kwargs={layer: options})


@pytest.mark.parametrize("options", [{}, HEADWISE], ids=str)
@pytest.mark.parametrize("layer", LAYERS)
def test_equals_step_float32(layer, options):
    check_against_step(layer, torch.float32, layer_kwargs={layer: options})


@pytest.mark.parametrize("options", [{}, HEADWISE], ids=str)
@pytest.mark.parametrize("layer", LAYERS)
def test_batch_invariant(layer, options):
    check_batch_invariant(layer, layer_kwargs={layer: options})
