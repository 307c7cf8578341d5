"""The chunk forms' bfloat16 option (compute_dtype="bfloat16"): GEMMs in bfloat16, the state
and its sums across chunks in float32, outputs in the input dtype.

Tolerance. bfloat16 keeps 8 significant bits, so rounding a number to it has relative error
at most u = 2^-8 ~ 3.9e-3 (unit roundoff). An output of a chunk form goes through about
five such roundings on its way (q, k, v as GEMM inputs, the masked scores or decayed keys
fed to the second GEMM, the GEMM result itself; the products accumulate in float32 inside
oneDNN, so the sums add no bfloat16 error). The roundings are independent, so the
norm-wise relative error of the output against the float32 chunk form is about
u * sqrt(5) ~ 9e-3, and 5 u ~ 2e-2 bounds it with margin even if they added up in the
same direction: TOL = 2e-2, norm-wise (an element where the sum cancels to near zero can
have a larger relative error, which a norm-wise bound rightly ignores). Gradients go
through the same roundings twice (forward and backward GEMMs): 2 TOL. The tests also
assert the error is above zero, i.e. that the bfloat16 path really ran.
"""

from __future__ import annotations

import pytest
import torch

import statewise.layers as layers
from statewise.ops.gated_linear_attention import gated_linear_attention_chunk
from statewise.ops.linear_attention import check_compute_dtype, linear_attention_chunk
from statewise.ops.mlstm import mlstm_chunk

TOL = 2e-2  # 5 u, u = 2^-8 the unit roundoff of bfloat16; see the module docstring
GRAD_TOL = 2 * TOL  # the forward's roundings plus the backward GEMMs' own
# mLSTM's readout h = num / max(|q . n|, 1): the gradients of q, k and the gates pass
# through d h / d(q . n) = -h / (q . n), which multiplies the bfloat16 error of q . n by
# its condition number sum_s |w_s q . k_s| / |sum_s w_s q . k_s| (w_s the gates), tens on
# random data. Measured here: 0.07-0.18 (0.01 for v and the initial state, which do not
# reach the normaliser through q . k). A bound for "the gradient is right up to bf16
# noise", not a precision claim; use float32 when training mLSTM needs exact gradients.
MLSTM_NORMALISED_GRAD_TOL = 0.3


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


def inputs(seed: int = 0, batch: int = 2, heads: int = 2, seq_len: int = 80, d: int = 16):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, seq_len, d, generator=gen)
    k = torch.randn(batch, heads, seq_len, d, generator=gen) * d**-0.5
    v = torch.randn(batch, heads, seq_len, d, generator=gen)
    s0 = torch.randn(batch, heads, d, d, generator=gen)
    return q, k, v, s0, gen


def scalar_op(compute_dtype, seed=0):
    q, k, v, s0, gen = inputs(seed)
    g = -torch.rand(q.shape[:3], generator=gen) * 0.2
    leaves = [t.requires_grad_(True) for t in (q, k, v, g, s0)]
    o, s = linear_attention_chunk(*leaves, chunk_size=32, compute_dtype=compute_dtype)
    return o, s, leaves


def gated_op(compute_dtype, seed=0, bonus=False, sign=False):
    q, k, v, s0, gen = inputs(seed)
    g = -torch.rand(q.shape, generator=gen) * 0.2
    u = torch.randn(q.shape[1], q.shape[3], generator=gen) if bonus else None
    signs = torch.where(torch.rand(q.shape, generator=gen) < 0.2, -1.0, 1.0) if sign else None
    leaves = [t.requires_grad_(True) for t in (q, k, v, g, s0)]
    o, s = gated_linear_attention_chunk(
        *leaves, bonus=u, sign=signs, chunk_size=32, compute_dtype=compute_dtype
    )
    return o, s, leaves


def mlstm_op(compute_dtype, seed=0):
    q, k, v, s0, gen = inputs(seed)
    log_i = torch.randn(q.shape[:3], generator=gen)
    log_f = torch.nn.functional.logsigmoid(torch.randn(q.shape[:3], generator=gen) + 3)
    n0 = torch.zeros(q.shape[:2] + q.shape[3:])
    m0 = torch.zeros(q.shape[:2])
    leaves = [t.requires_grad_(True) for t in (q, k, v, log_i, log_f, s0, n0)]
    h, (c, n, m) = mlstm_chunk(
        *leaves[:5], (leaves[5], leaves[6], m0), chunk_size=32, compute_dtype=compute_dtype
    )
    return h, c, leaves


OPS = {
    "linear_attention": scalar_op,
    "gated": gated_op,
    "gated_bonus": lambda cd: gated_op(cd, bonus=True),
    "gated_sign": lambda cd: gated_op(cd, sign=True),
    "mlstm": mlstm_op,
}


@pytest.mark.parametrize("name", list(OPS))
def test_bfloat16_op_close_to_float32(name):
    o32, s32, leaves32 = OPS[name]("float32")
    o16, s16, leaves16 = OPS[name]("bfloat16")
    assert o16.dtype == torch.float32 and s16.dtype == torch.float32
    assert 0 < relative(o16, o32) < TOL
    assert 0 < relative(s16, s32) < TOL
    weight = torch.randn(o32.shape, generator=torch.Generator().manual_seed(1))
    grads32 = torch.autograd.grad((o32 * weight).sum() + s32.sum(), leaves32)
    grads16 = torch.autograd.grad((o16 * weight).sum() + s16.sum(), leaves16)
    # mlstm's leaves: q, k, v, log_i, log_f, C_0, n_0; only v and C_0 avoid the normaliser
    loose = {0, 1, 3, 4, 6} if name == "mlstm" else set()
    for i, (got, want) in enumerate(zip(grads16, grads32)):
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        assert relative(got, want) < (MLSTM_NORMALISED_GRAD_TOL if i in loose else GRAD_TOL)


def test_float32_option_is_the_plain_form():
    o, s, _ = scalar_op(None)
    o32, s32, _ = scalar_op("float32")
    torch.testing.assert_close(o32, o, rtol=0, atol=0)
    torch.testing.assert_close(s32, s, rtol=0, atol=0)


def test_float64_is_never_lowered():
    q, k, v, s0, gen = (t.double() if torch.is_tensor(t) else t for t in inputs())
    g = -torch.rand(q.shape[:3], generator=gen, dtype=torch.float64)
    want = linear_attention_chunk(q, k, v, g, s0, chunk_size=16)
    got = linear_attention_chunk(q, k, v, g, s0, chunk_size=16, compute_dtype="bfloat16")
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("value", ["float16", "bf16", torch.bfloat16, None])
def test_check_compute_dtype_rejects(value):
    with pytest.raises(ValueError, match="compute_dtype"):
        check_compute_dtype(value)


@pytest.mark.parametrize("name", ["retnet", "gateloop", "mlstm", "mamba2", "rwkv"])
def test_layer_bfloat16_option(name):
    ref = layers.get(name, 32, mode="chunk", chunk_size=16)
    low = layers.get(name, 32, mode="chunk", chunk_size=16, compute_dtype="bfloat16")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights: some layers start with a zero output projection
        for p in ref.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    low.load_state_dict(ref.state_dict())
    x = torch.randn(2, 50, 32, generator=torch.Generator().manual_seed(2))
    y32, state32 = ref(x)
    y16, state16 = low(x)
    assert y16.dtype == torch.float32
    assert 0 < relative(y16, y32) < TOL
    for key, value in state16.items():
        if value.is_floating_point():
            assert value.dtype == torch.float32, key
            assert relative(value, state32[key]) < TOL, key
    y16.square().mean().backward()
    grads = [p.grad for p in low.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
