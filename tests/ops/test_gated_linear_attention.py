"""statewise.ops.gated_linear_attention: the three forms against a float64 loop written here."""

from __future__ import annotations

import pytest
import torch

from statewise.ops.gated_linear_attention import (
    MODES,
    gated_linear_attention,
    gated_linear_attention_chunk,
)
from statewise.ops.linear_attention import linear_attention

F64 = dict(rtol=1e-10, atol=1e-12)

FORMS = {
    "recurrent": dict(mode="recurrent"),
    "parallel": dict(mode="parallel"),
    "chunk1": dict(mode="chunk", chunk_size=1),
    "chunk2": dict(mode="chunk", chunk_size=2),
    "chunk4": dict(mode="chunk", chunk_size=4),
    "chunk8": dict(mode="chunk", chunk_size=8),
    "chunk64": dict(mode="chunk", chunk_size=64),
}
VARIANTS = ["plain", "bonus", "signed", "bonus+signed"]


def reference(q, k, v, g, state, bonus=None, sign=None):
    """S_t = diag(a_t) S_{t-1} + k_t^T v_t with a_t = sign_t exp(g_t); o_t = q_t S_t, or
    o_t = q_t (S_{t-1} + diag(u) k_t^T v_t) with the bonus u. One step at a time, float64."""
    batch, heads, seq_len, d_k = q.shape
    d_v = v.shape[-1]
    s = torch.zeros(batch, heads, d_k, d_v, dtype=q.dtype) if state is None else state
    a = torch.exp(g) if sign is None else sign * torch.exp(g)
    out = []
    for t in range(seq_len):
        kv = torch.einsum("bhk,bhv->bhkv", k[:, :, t], v[:, :, t])
        if bonus is None:
            s = a[:, :, t, :, None] * s + kv
            out.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], s))
        else:
            read = s + bonus[None, :, :, None] * kv
            out.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], read))
            s = a[:, :, t, :, None] * s + kv
    o = torch.stack(out, dim=2) if out else torch.zeros(batch, heads, 0, d_v, dtype=q.dtype)
    return o, s


def problem(seq_len, variant="plain", batch=2, heads=3, d_k=4, d_v=5, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k = randn(batch, heads, seq_len, d_k), randn(batch, heads, seq_len, d_k)
    v = randn(batch, heads, seq_len, d_v)
    g = -scale * torch.rand(batch, heads, seq_len, d_k, generator=gen, dtype=torch.float64)
    state = randn(batch, heads, d_k, d_v)
    bonus = randn(heads, d_k) if "bonus" in variant else None
    sign = None
    if "signed" in variant:
        flip = torch.rand(batch, heads, seq_len, d_k, generator=gen) < 0.5
        sign = torch.where(flip, -1.0, 1.0).to(torch.float64)
    return q, k, v, g, state, bonus, sign


def assert_pair_close(got, want, **tol):
    torch.testing.assert_close(got[0], want[0], **tol)
    torch.testing.assert_close(got[1], want[1], **tol)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("seq_len", [1, 4, 5, 13, 17])
def test_forms_equal_reference(form, seq_len, variant):
    q, k, v, g, state, bonus, sign = problem(seq_len, variant)
    want = reference(q, k, v, g, state, bonus, sign)
    got = gated_linear_attention(q, k, v, g, state, bonus=bonus, sign=sign, **FORMS[form])
    assert_pair_close(got, want, **F64)
    got = gated_linear_attention(q, k, v, g, None, bonus=bonus, sign=sign, **FORMS[form])
    assert_pair_close(got, reference(q, k, v, g, None, bonus, sign), **F64)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_equal_reference(variant):
    """Gradients of every input, g included (the chunk form's identity for dg), per form."""
    data = problem(11, variant)
    q, k, v, g, state, bonus, sign = data
    gen = torch.Generator().manual_seed(5)
    w_o = torch.randn(2, 3, 11, 5, generator=gen, dtype=torch.float64)
    w_s = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)

    def grads(run):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, g, state)]
        u = None if bonus is None else bonus.clone().requires_grad_(True)
        o, s = run(*leaves, u)
        loss = (o * w_o).sum() + (s * w_s).sum()
        return torch.autograd.grad(loss, leaves + ([u] if u is not None else []))

    want = grads(lambda q, k, v, g, s, u: reference(q, k, v, g, s, u, sign))
    for form, kwargs in FORMS.items():
        got = grads(
            lambda q, k, v, g, s, u, kwargs=kwargs: gated_linear_attention(
                q, k, v, g, s, bonus=u, sign=sign, **kwargs
            )
        )
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, **F64, msg=lambda m, form=form: f"{form}: {m}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck_chunk(variant):
    q, k, v, g, state, bonus, sign = problem(6, variant, batch=1, heads=2, d_k=2, d_v=3)
    args = [t.requires_grad_(True) for t in (q, k, v, g, state)]
    if bonus is not None:
        args.append(bonus.requires_grad_(True))

    def fn(q, k, v, g, s, u=None):
        return gated_linear_attention(q, k, v, g, s, bonus=u, sign=sign, chunk_size=4)

    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("variant", VARIANTS)
def test_chunk_float32_stable_under_strong_decay(variant):
    """Decays of e^-40 per step and hard resets (g = -inf) inside 64-step chunks: the
    chunk form in float32 stays finite and matches the float64 loop. A single reference
    per chunk would need exp(+2500) here and overflow."""
    q, k, v, g, state, bonus, sign = problem(150, variant, seed=1, scale=40.0)
    g[:, :, 70] = float("-inf")  # a hard reset on every channel
    g[0, 1, 20:90, 2] = -1e-3  # one channel that hardly decays across the reset-free part
    want = reference(q, k, v, g, state, bonus, sign)
    as32 = [None if t is None else t.float() for t in (q, k, v, g, state, bonus, sign)]
    q, k, v, g, state, bonus, sign = as32
    got = gated_linear_attention_chunk(q, k, v, g, state, bonus, sign, chunk_size=64)
    assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all()
    for a, b in zip(got, want):
        # float32 rounding of O(1) values accumulated over a few dozen effective terms
        assert (a.double() - b).abs().max().item() <= 1e-4 * max(1.0, b.abs().max().item())


def test_hard_reset_forgets_everything_before():
    q, k, v, g, state, _, _ = problem(9)
    g[:, :, 4] = float("-inf")
    for kwargs in FORMS.values():
        o, s = gated_linear_attention(q, k, v, g, state, **kwargs)
        o2, s2 = gated_linear_attention(q[:, :, 4:], k[:, :, 4:], v[:, :, 4:], g[:, :, 4:], None)
        torch.testing.assert_close(o[:, :, 4:], o2, **F64)
        torch.testing.assert_close(s, s2, **F64)


def test_scalar_decay_matches_the_scalar_op():
    q, k, v, g, state, _, _ = problem(13)
    g_head = g[..., 0]  # one decay per head and step, broadcast over the key channels
    want = linear_attention(q, k, v, g_head, state, mode="recurrent")
    got = gated_linear_attention(q, k, v, g_head.unsqueeze(-1).expand_as(q).clone(), state)
    assert_pair_close(got, want, **F64)


def test_skipped_steps_leave_the_state_unchanged():
    """g = 0, k = 0 (and sign = 1) at a step: the state passes through it (the layers' masks)."""
    q, k, v, g, state, bonus, sign = problem(7, "bonus+signed")
    k[:, :, 3], g[:, :, 3], sign[:, :, 3] = 0.0, 0.0, 1.0
    keep = [0, 1, 2, 4, 5, 6]
    for kwargs in FORMS.values():
        _, s_all = gated_linear_attention(q, k, v, g, state, bonus=bonus, sign=sign, **kwargs)
        _, s_kept = gated_linear_attention(
            *(t[:, :, keep] for t in (q, k, v, g)),
            state,
            bonus=bonus,
            sign=sign[:, :, keep],
            **kwargs,
        )
        torch.testing.assert_close(s_all, s_kept, **F64)


def test_empty_sequence():
    q, k, v, g, state, bonus, _ = problem(0, "bonus")
    for kwargs in FORMS.values():
        o, s = gated_linear_attention(q, k, v, g, state, bonus=bonus, **kwargs)
        assert o.shape == (2, 3, 0, 5)
        torch.testing.assert_close(s, state, rtol=0, atol=0)


def test_bad_arguments():
    q, k, v, g, state, bonus, _ = problem(5, "bonus")
    with pytest.raises(ValueError, match="q and k"):
        gated_linear_attention(q, k[..., :-1], v, g)
    with pytest.raises(ValueError, match="v must be"):
        gated_linear_attention(q, k, v[:, :, :-1], g)
    with pytest.raises(ValueError, match="g must be"):
        gated_linear_attention(q, k, v, g[..., 0])
    with pytest.raises(ValueError, match="bonus must be"):
        gated_linear_attention(q, k, v, g, bonus=bonus[:, :-1])
    with pytest.raises(ValueError, match="sign must be"):
        gated_linear_attention(q, k, v, g, sign=g[..., :-1])
    with pytest.raises(ValueError, match="initial_state"):
        gated_linear_attention(q, k, v, g, state[..., :-1])
    with pytest.raises(ValueError, match="power of two"):
        gated_linear_attention(q, k, v, g, chunk_size=3)
    with pytest.raises(ValueError, match="chunk_size"):
        gated_linear_attention(q, k, v, g, chunk_size=0)
    with pytest.raises(ValueError, match="mode must be"):
        gated_linear_attention(q, k, v, g, mode="scan")
    assert MODES == ("recurrent", "parallel", "chunk")
