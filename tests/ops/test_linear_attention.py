"""statewise.ops.linear_attention: the three forms against a float64 loop from the equation."""

from __future__ import annotations

import pytest
import torch

from statewise.ops.linear_attention import (
    MODES,
    chunk_states,
    linear_attention,
    linear_attention_chunk,
    linear_attention_parallel,
    linear_attention_recurrent,
    segsum,
)

F64 = dict(rtol=1e-10, atol=1e-12)

FORMS = {
    "recurrent": lambda q, k, v, g, s: linear_attention_recurrent(q, k, v, g, s),
    "parallel": lambda q, k, v, g, s: linear_attention_parallel(q, k, v, g, s),
    "chunk1": lambda q, k, v, g, s: linear_attention_chunk(q, k, v, g, s, chunk_size=1),
    "chunk3": lambda q, k, v, g, s: linear_attention_chunk(q, k, v, g, s, chunk_size=3),
    "chunk4": lambda q, k, v, g, s: linear_attention_chunk(q, k, v, g, s, chunk_size=4),
    "chunk64": lambda q, k, v, g, s: linear_attention_chunk(q, k, v, g, s, chunk_size=64),
}


def reference(q, k, v, g, state):
    """S_t = exp(g_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t, one step at a time."""
    batch, heads, seq_len, d_k = q.shape
    d_v = v.shape[-1]
    s = torch.zeros(batch, heads, d_k, d_v, dtype=q.dtype) if state is None else state
    out = []
    for t in range(seq_len):
        s = torch.exp(g[:, :, t, None, None]) * s + torch.einsum(
            "bhk,bhv->bhkv", k[:, :, t], v[:, :, t]
        )
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], s))
    o = torch.stack(out, dim=2) if out else torch.zeros(batch, heads, 0, d_v, dtype=q.dtype)
    return o, s


def problem(seq_len, batch=2, heads=3, d_k=4, d_v=5, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    q, k = randn(batch, heads, seq_len, d_k), randn(batch, heads, seq_len, d_k)
    v = randn(batch, heads, seq_len, d_v)
    g = -torch.rand(batch, heads, seq_len, generator=gen, dtype=torch.float64).to(dtype)
    state = randn(batch, heads, d_k, d_v)
    return q, k, v, g, state


def assert_pair_close(got, want, **tol):
    torch.testing.assert_close(got[0], want[0], **tol)
    torch.testing.assert_close(got[1], want[1], **tol)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("seq_len", [1, 4, 5, 8, 13])
def test_forms_equal_reference(form, seq_len):
    q, k, v, g, state = problem(seq_len)
    assert_pair_close(FORMS[form](q, k, v, g, state), reference(q, k, v, g, state), **F64)
    assert_pair_close(FORMS[form](q, k, v, g, None), reference(q, k, v, g, None), **F64)


def test_segsum():
    g = torch.tensor([[0.5, -1.0, -2.0, -0.25]], dtype=torch.float64)
    out = segsum(g)[0]
    for t in range(4):
        for s in range(4):
            want = g[0, s + 1 : t + 1].sum() if s <= t else torch.tensor(float("-inf"))
            torch.testing.assert_close(out[t, s], want.to(out.dtype))


@pytest.mark.parametrize("form", FORMS)
def test_no_decay_and_hard_reset(form):
    q, k, v, _, state = problem(9, seed=1)
    # g = 0: plain (undecayed) linear attention
    g = torch.zeros(q.shape[:3], dtype=torch.float64)
    assert_pair_close(FORMS[form](q, k, v, g, state), reference(q, k, v, g, state), **F64)
    # g = -inf at one step: everything before it is forgotten, exactly, with no NaN
    g = -torch.rand(q.shape[:3], dtype=torch.float64)
    g[:, 1, 5] = float("-inf")
    o, s = FORMS[form](q, k, v, g, state)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    assert_pair_close((o, s), reference(q, k, v, g, state), **F64)
    o_after, _ = reference(q[:, 1:2, 5:], k[:, 1:2, 5:], v[:, 1:2, 5:], g[:, 1:2, 5:], None)
    torch.testing.assert_close(o[:, 1:2, 5:], o_after, **F64)


@pytest.mark.parametrize("mode", ["parallel", "chunk"])
def test_strong_decay_long_sequence_float32_does_not_overflow(mode):
    # cumsum(g) reaches -2560: exp(cumsum_t - cumsum_s) as a difference of two prefix
    # sums would be exp(+2560) * 0 = NaN; segment sums keep every exponent <= 0
    q, k, v, _, state = problem(256, heads=2, seed=2, dtype=torch.float32)
    g = torch.full(q.shape[:3], -10.0)
    o, s = linear_attention(q, k, v, g, state, mode=mode, chunk_size=64)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    o_ref, s_ref = reference(*(t.double() for t in (q, k, v, g, state)))
    torch.testing.assert_close(o.double(), o_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s.double(), s_ref, rtol=1e-4, atol=1e-4)


def test_float32_forms_agree():
    q, k, v, g, state = problem(200, seed=3, dtype=torch.float32)
    g = g * 0.05  # slow decay, long memory
    o_ref, s_ref = reference(*(t.double() for t in (q, k, v, g, state)))
    scale = o_ref.abs().max()
    for mode in MODES:
        o, s = linear_attention(q, k, v, g, state, mode=mode, chunk_size=16)
        assert (o.double() - o_ref).abs().max() <= 1e-5 * scale, mode
        assert (s.double() - s_ref).abs().max() <= 1e-5 * s_ref.abs().max(), mode


def test_gradients_equal_across_forms():
    q, k, v, g, state = problem(11, seed=4)
    gen = torch.Generator().manual_seed(5)
    w_o = torch.randn(2, 3, 11, 5, generator=gen, dtype=torch.float64)
    w_s = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)

    def grads(fn):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, g, state)]
        o, s = fn(*leaves)
        return torch.autograd.grad((o * w_o).sum() + (s * w_s).sum(), leaves)

    want = grads(reference)
    for name, form in FORMS.items():
        for got, exp in zip(grads(form), want):
            torch.testing.assert_close(got, exp, **F64, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode):
    q, k, v, g, state = problem(5, batch=1, heads=2, d_k=3, d_v=2, seed=6)
    args = [t.requires_grad_(True) for t in (q, k, v, g, state)]
    assert torch.autograd.gradcheck(lambda *a: linear_attention(*a, mode=mode, chunk_size=2), args)


def test_empty_sequence():
    q, k, v, g, state = problem(0)
    for mode in MODES:
        o, s = linear_attention(q, k, v, g, state, mode=mode)
        assert o.shape == (2, 3, 0, 5)
        torch.testing.assert_close(s, state)


def test_errors():
    q, k, v, g, state = problem(6)
    with pytest.raises(ValueError, match="mode must be"):
        linear_attention(q, k, v, g, mode="fft")
    with pytest.raises(ValueError, match="chunk_size"):
        linear_attention(q, k, v, g, mode="chunk", chunk_size=0)
    with pytest.raises(ValueError, match="q and k"):
        linear_attention(q, k[..., :-1], v, g)
    with pytest.raises(ValueError, match="v must be"):
        linear_attention(q, k, v[:, :, :-1], g)
    with pytest.raises(ValueError, match="g must be"):
        linear_attention(q, k, v, g[..., :-1])
    with pytest.raises(ValueError, match="initial_state"):
        linear_attention(q, k, v, g, state[..., :-1])


@pytest.mark.parametrize("per_channel", [False, True])
def test_chunk_states_matches_loop_and_gradcheck(per_channel):
    """S_n = a_n S_{n-1} + A_n against the plain loop, and its custom backward by gradcheck."""
    gen = torch.Generator().manual_seed(3)
    shape = (2, 3, 5, 4) if per_channel else (2, 3, 5)
    decay = torch.rand(shape, generator=gen, dtype=torch.float64)
    added = torch.randn(2, 3, 5, 4, 2, generator=gen, dtype=torch.float64)
    state = torch.randn(2, 3, 4, 2, generator=gen, dtype=torch.float64)
    before, final = chunk_states(decay, added, state)
    s, want = state, []
    for n in range(5):
        want.append(s)
        a = decay[:, :, n, :, None] if per_channel else decay[:, :, n, None, None]
        s = a * s + added[:, :, n]
    torch.testing.assert_close(before, torch.stack(want, dim=2), **F64)
    torch.testing.assert_close(final, s, **F64)
    args = [t.requires_grad_(True) for t in (decay, added, state)]
    assert torch.autograd.gradcheck(chunk_states, args)
