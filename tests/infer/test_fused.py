"""The fused decode step (statewise.infer.fused) against model.step, its twin: the block's
parts (norms, MLPs, head options) with minGRU, and what the decoder refuses. The other
families' mixers are tested in test_fused_<family>.py with the same checks."""

from __future__ import annotations

import pytest
import torch

from statewise.errors import ArgumentError
from statewise.infer.fused import FusedDecoder, why_not_fusable
from statewise.infer.quantize import quantize_for_serving
from tests.infer.fused_check import check_against_step, check_batch_invariant, make_model

BLOCK_VARIANTS = [
    {},
    {"norm": "rmsnorm", "mlp": "swiglu"},
    {"norm": "rmsnorm_plus_one", "mlp": "geglu", "embed_scale": 5.0, "logit_softcap": 3.0},
    {"mlp_ratio": 0.0, "tie_embeddings": True},
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("config", BLOCK_VARIANTS, ids=str)
def test_block_parts_equal_step(config, dtype):
    check_against_step("mingru", dtype, **config)


@pytest.mark.parametrize(
    "layer_kwargs",
    [{"negative_eigenvalues": True}, {"expand": 1.5}],
    ids=str,
)
def test_mingru_options_equal_step(layer_kwargs):
    check_against_step("mingru", torch.float64, layer_kwargs={"mingru": layer_kwargs})


def test_batch_invariant():
    check_batch_invariant("mingru", norm="rmsnorm", mlp="swiglu")


def test_state_left_alone_unless_in_place():
    model = make_model("mingru", torch.float32)
    fused = FusedDecoder(model)
    state = model.init_state(2)
    before = [s.clone() for s in state]
    _, new = fused.step(torch.tensor([1, 2]), state)
    assert all(torch.equal(a, b) for a, b in zip(state, before))
    assert not torch.equal(new[0], before[0])
    _, same = fused.step(torch.tensor([1, 2]), state, in_place=True)
    assert same[0] is state[0] and not torch.equal(state[0], before[0])


def test_refuses_what_it_cannot_run():
    model = make_model("mingru", torch.float32)
    assert why_not_fusable(model) is None
    assert "no fused step" in why_not_fusable(make_model("s4d", torch.float32))
    quantize_for_serving(model, "int8")
    with pytest.raises(ArgumentError, match="quantized"):
        FusedDecoder(model)
    training = make_model("mingru", torch.float32).train()
    with pytest.raises(ArgumentError, match="eval mode"):
        FusedDecoder(training).step(torch.tensor([1]), training.init_state(1))


@pytest.mark.parametrize("layer", ["mingru", "mamba"])
def test_weights_updated_in_place_are_seen(layer):
    """The decoder reads the model's own memory (and recomputes what it derives from a
    parameter, such as Mamba's A = -exp(A_log), when the parameter's version changes)."""
    model = make_model(layer, torch.float64)
    fused = FusedDecoder(model)
    ids = torch.tensor([1, 2])
    fused.step(ids, model.init_state(2))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.1)
    state = model.init_state(2)
    expected, _ = model.step(ids, state)
    got, _ = fused.step(ids, state)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=0)


def test_bad_ids_and_states_are_refused_before_any_kernel_runs():
    """The kernels index rows without bounds checks, so a state of another batch size,
    shape or dtype, or ids outside the vocabulary, must be refused at the boundary."""
    model = make_model("lstm", torch.float32)
    fused = FusedDecoder(model)
    ids = torch.tensor([1, 2])
    good = model.init_state(2)
    with pytest.raises(ArgumentError, match="ids must lie"):
        fused.step(torch.tensor([1, 10**6]), good)
    with pytest.raises(ArgumentError, match=r"need \(2, "):
        fused.step(ids, model.init_state(3))
    with pytest.raises(ArgumentError, match="float32"):
        fused.step(ids, [tuple(t.double() for t in s) for s in good])
    with pytest.raises(ArgumentError, match="model's state"):
        fused.step(ids, good[:1])
    with pytest.raises(ArgumentError, match="model's state"):
        fused.step(ids, [s[0] for s in good])  # (h, c) pairs given as h alone
    strided = [tuple(t.t().contiguous().t() for t in s) for s in good]
    with pytest.raises(ArgumentError, match="contiguous"):
        fused.step(ids, strided, in_place=True)
    fused.step(ids, strided)  # copied first when not in place
