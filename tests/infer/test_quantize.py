"""Weights in int8 and bfloat16 for serving (statewise.infer.quantize): the int8 scales and
rounding against a float64 reference, each int8 kernel against a float Linear with the
dequantized weight, bfloat16 Linear against a float64 product of the rounded operands,
quantized language models of several layers against float32, and the engine on them."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import statewise
from statewise.errors import ArgumentError, ArgumentTypeError
from statewise.infer.quantize import (
    BF16Embedding,
    BF16Linear,
    Int8Linear,
    int8_scales,
    quantize_for_serving,
    quantize_int8,
)
from statewise.models import ModelConfig, build_model
from statewise.ops.tree import tree_leaves

LAYERS = ["lstm", "mingru", "mamba", "retnet", "rwkv"]
BF16_EPS = 2.0**-8  # bfloat16's spacing relative to a value: rounding is within half


def weight(out: int, inp: int, seed: int = 0) -> torch.Tensor:
    """Rows of very different magnitudes, one all zero, one whose max is a power of two."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) * torch.logspace(-3, 1, out)[:, None]
    w[1] = 0.0
    w[2, 0] = 4.0 * w[2].abs().max() / w[2].abs().max()  # exactly 4.0, the row's max
    return w


def test_int8_scales_are_the_smallest_bfloat16_covering_the_row():
    w = weight(40, 48)
    scale = int8_scales(w)
    amax = w.double().abs().amax(dim=1)
    assert scale.dtype == torch.float32
    assert torch.equal(scale.bfloat16().float(), scale)  # a bfloat16 value
    nonzero = amax > 0
    assert bool((scale.double()[nonzero] * 127 >= amax[nonzero]).all())
    below = (scale.bfloat16().view(torch.int16) - 1).view(torch.bfloat16).double()
    assert bool((below[nonzero] * 127 < amax[nonzero]).all())  # the next one down is short
    assert scale[1] == 1.0  # the zero row


def test_int8_rounding_is_within_half_a_step_and_matches_float64():
    w = weight(40, 48)
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    w64, s64 = w.double().numpy(), scale.double().numpy()[:, None]
    reference = np.clip(np.rint(w64 / s64), -127, 127)
    ties = np.abs(np.abs(w64 / s64 - np.trunc(w64 / s64)) - 0.5) < 1e-6
    assert np.array_equal(q.numpy()[~ties], reference[~ties])
    error = np.abs(w64 - q.double().numpy() * s64)
    assert (error <= s64 / 2 * (1 + 1e-6)).all()
    assert (q[1] == 0).all()
    # a row's max uses the range: 127, or 126 where rounding the scale up to a bfloat16
    # value (up to 2^-8 relative) took it below 126.5
    assert bool((q.abs().amax(dim=1)[torch.arange(40) != 1] >= 126).all())


@pytest.mark.parametrize("shape", [(3, 48), (2, 5, 48), (1, 17)])
def test_int8_float32_kernel_equals_the_dequantized_linear(shape):
    linear = torch.nn.Linear(shape[-1], 24)
    q = Int8Linear.from_linear(linear, kernel="float32")
    x = torch.randn(shape)
    dequantized = q.weight.double() * q.scale.double()[:, None]
    assert torch.equal(q.dequantized().double(), dequantized)  # exact in float32
    reference = F.linear(x.double(), dequantized, linear.bias.detach().double())
    y = q(x)
    assert y.shape == (*shape[:-1], 24) and y.dtype == torch.float32
    assert float((y.double() - reference).abs().max()) <= 1e-6 * float(reference.abs().max())


@pytest.mark.parametrize("kernel", ["int8pack", "bf16"])
@pytest.mark.parametrize("rows", [1, 7, 33])
def test_int8_fast_kernels_equal_the_dequantized_linear_on_bfloat16_inputs(kernel, rows):
    """The fast kernels read activations as bfloat16 and round the output to bfloat16
    (int8pack twice: the sum, then times the scale); against the float64 product of the
    bfloat16-rounded input and the dequantized weight, every output is within 2^-8 of its
    value (+ float32 summation error)."""
    linear = torch.nn.Linear(64, 40)
    with torch.no_grad():
        linear.weight.copy_(weight(40, 64, seed=3))
    q = Int8Linear.from_linear(linear, kernel=kernel)
    x = torch.randn(rows, 64, generator=torch.Generator().manual_seed(rows))
    wx = F.linear(x.bfloat16().double(), q.dequantized().double())
    y = q(x)
    assert y.dtype == torch.float32
    error = (y.double() - linear.bias.double() - wx).abs()
    bound = BF16_EPS * wx.abs() + 1e-6 * wx.abs().amax(dim=1, keepdim=True)
    assert bool((error <= bound).all()), float((error / bound).max())


def test_int8_auto_kernel_by_rows_and_width():
    linear = torch.nn.Linear(32, 20)
    auto = Int8Linear.from_linear(linear)
    pack = Int8Linear.from_linear(linear, kernel="int8pack")
    gemm = Int8Linear.from_linear(linear, kernel="bf16")
    few, many = torch.randn(4, 2, 32), torch.randn(4, 5, 32)  # 8 and 20 rows
    assert torch.equal(auto(few), pack(few))
    assert torch.equal(auto(many), gemm(many))
    narrow = torch.nn.Linear(17, 20)  # torch's int8pack kernel crashes when in % 16 != 0
    assert torch.isfinite(Int8Linear.from_linear(narrow)(torch.randn(3, 17))).all()
    with pytest.raises(ArgumentError, match="multiple of 16"):
        Int8Linear.from_linear(narrow, kernel="int8pack")


def test_bf16_linear_equals_the_product_of_rounded_operands():
    """Against the float64 product of the bfloat16-rounded input and weight: within 2^-8 of
    sum_k |x_k w_k| (oneDNN's bfloat16 GEMM rounds more than its output once: up to 0.4%
    of a value was seen, 0.12% of that sum)."""
    linear = torch.nn.Linear(64, 40)
    x = torch.randn(6, 64)
    y = BF16Linear(linear.weight, linear.bias)(x)
    assert y.dtype == torch.float32
    xb, wb = x.bfloat16().double(), linear.weight.detach().bfloat16().double()
    wx, size = F.linear(xb, wb), F.linear(xb.abs(), wb.abs())
    error = (y.double() - linear.bias.detach().double() - wx).abs()
    assert bool((error <= BF16_EPS * size).all())
    assert float(error.max()) > 0  # it did run in bfloat16


def small_lm(layer: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(layer=layer, d_model=32, n_layers=2, vocab_size=256))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # off the init (rwkv's zero output projection ignores history)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


# relative error of the logits against float32 (norm of the difference / norm of float32's)
# (d_model 32, measured: int8 0.010-0.020, bfloat16 0.005-0.009 for these layers)
TOLERANCE = {"int8": 3e-2, "bfloat16": 1.5e-2}


@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
@pytest.mark.parametrize("layer", LAYERS)
def test_quantized_language_model_stays_near_float32(layer, dtype):
    """Forward over 24 tokens and the same tokens step by step: logits within TOLERANCE of
    float32's (and not equal: the weights really changed), states float32."""
    reference = small_lm(layer)
    model = quantize_for_serving(copy.deepcopy(reference), dtype)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert not linears
    kind = Int8Linear if dtype == "int8" else BF16Linear
    assert isinstance(model.unembed, kind)
    assert isinstance(model.embed, BF16Embedding if dtype == "bfloat16" else torch.nn.Embedding)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = reference(ids)
        got, state = model(ids, return_state=True)
        steps, s = [], model.init_state(2, dtype=torch.float32)
        for t in range(ids.shape[1]):
            logits, s = model.step(ids[:, t], s)
            steps.append(logits)
    for logits in (got, torch.stack(steps, dim=1)):
        assert logits.dtype == torch.float32
        relative = float((logits - want).norm() / want.norm())
        assert 0 < relative <= TOLERANCE[dtype], relative
    assert all(
        leaf.dtype == torch.float32 for leaf in tree_leaves(state) if leaf.is_floating_point()
    )
    assert all(leaf.dtype == torch.float32 for leaf in tree_leaves(s) if leaf.is_floating_point())


@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
def test_the_engine_serves_a_quantized_model(dtype):
    """generate_many over more prompts than slots completes with the asked token counts; a
    greedy request alone gives LanguageModel.generate's tokens (same arithmetic)."""
    model = quantize_for_serving(small_lm("mingru"), dtype)
    engine = statewise.Engine(model, max_batch=3, prefill_chunk=8, state_cache_mb=1)
    assert engine.dtype == torch.float32
    assert all(t.dtype == torch.float32 for t in tree_leaves(engine.state))
    prompts = [[1 + i, 2, 3, 40 + i] for i in range(5)]
    streams = [
        engine.submit(p, max_tokens=6, temperature=0.8, seed=i) for i, p in enumerate(prompts)
    ]
    while not all(s.done for s in streams):
        engine.step()
    assert [len(s.tokens) for s in streams] == [6] * 5
    assert len(engine.generate_many(["ab", "cd"], max_tokens=3, temperature=0)) == 2
    alone = statewise.Engine(model, max_batch=1, prefill_chunk=8, state_cache_mb=0)
    stream = alone.submit(prompts[0], max_tokens=6, temperature=0)
    stream.result()
    generated = model.generate(torch.tensor([prompts[0]]), 6, temperature=0)
    assert stream.tokens == generated[0, 4:].tolist()


def test_tied_embeddings_share_one_bfloat16_table():
    torch.manual_seed(0)
    config = ModelConfig(layer="mingru", d_model=32, n_layers=1, vocab_size=64, tie_embeddings=True)
    model = quantize_for_serving(build_model(config), torch.bfloat16)
    assert model.embed.weight is model.unembed.weight
    assert model.embed.weight.dtype == torch.bfloat16


def test_float32_is_unchanged_and_bad_dtypes_are_refused():
    model = small_lm("mingru")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert quantize_for_serving(model, "float32") is model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for bad in ("int4", "fp16", torch.float16, torch.float64):
        with pytest.raises(ArgumentError, match="float32, bfloat16, int8"):
            quantize_for_serving(model, bad)
    with pytest.raises(ArgumentTypeError):
        quantize_for_serving(model, 8)
    with pytest.raises(ArgumentError, match="NaN"):
        quantize_int8(torch.tensor([[1.0, float("nan")]]))
