"""The fused mLSTM step (statewise.infer.fused.mlstm) against MLSTM.step, its twin, over the
options that change the step: head count, key and value widths, negative eigenvalues,
the gates' soft cap and the norm's eps; and its batch invariance."""

from __future__ import annotations

import pytest
import torch

from tests.infer import fused_check
from tests.infer.fused_check import check_against_step, check_batch_invariant

OPTIONS = [
    {},  # 4 heads, d_k 4, d_v 8
    {"n_heads": 2, "negative_eigenvalues": True},
    {"n_heads": 1, "qk_dim_factor": 1.0, "v_dim_factor": 0.5, "gate_soft_cap": 2.0},
    {"n_heads": 8, "negative_eigenvalues": True, "gate_soft_cap": 15.0, "norm_eps": 1e-3},
]


@pytest.fixture
def forget_near_zero(monkeypatch):
    """The models' forget biases at 0 instead of 3..6, so that f~ takes both signs over the
    rows, heads and steps (a negative forget gate with negative eigenvalues)."""
    make_model = fused_check.make_model

    def centred(layer: str, dtype: torch.dtype, **config) -> torch.nn.Module:
        model = make_model(layer, dtype, **config)
        with torch.no_grad():
            for block in model.backbone.blocks:
                block.mixer.f_proj.bias.zero_()
        return model

    monkeypatch.setattr(fused_check, "make_model", centred)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_mlstm_equals_step(options, dtype):
    check_against_step("mlstm", dtype, layer_kwargs={"mlstm": options})


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("options", [{}, {"negative_eigenvalues": True}], ids=str)
def test_mlstm_forget_of_both_signs_equals_step(options, dtype, forget_near_zero):
    check_against_step("mlstm", dtype, layer_kwargs={"mlstm": options})


@pytest.mark.parametrize("options", [{}, {"n_heads": 2, "negative_eigenvalues": True}], ids=str)
def test_mlstm_batch_invariant(options, forget_near_zero):
    check_batch_invariant("mlstm", layer_kwargs={"mlstm": options})
