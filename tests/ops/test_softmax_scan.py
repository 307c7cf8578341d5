"""statewise.ops.softmax_scan: both forms against a float64 loop and against plain softmax."""

from __future__ import annotations

import pytest
import torch

from statewise.ops.softmax_scan import (
    MODES,
    softmax_combine,
    softmax_readout,
    softmax_scan,
    softmax_scan_loop,
    softmax_scan_parallel,
)

F64 = dict(rtol=1e-10, atol=1e-12)
FORMS = [softmax_scan_loop, softmax_scan_parallel]
FORM_IDS = ["loop", "scan"]
B, H, D = 3, 2, 4
NEG_INF = float("-inf")


def reference(s, v, state):
    """The RNN cell step by step; a step with s = -inf leaves the state as it is."""
    m, u, w = state
    ms, us, ws = [], [], []
    for t in range(s.shape[1]):
        s_t, v_t = s[:, t], v[:, t]
        skip = torch.isinf(s_t)
        m_new = torch.where(skip, m, torch.maximum(m, s_t))
        old = torch.where(skip, torch.ones_like(m), torch.exp(m - m_new))
        new = torch.where(skip, torch.zeros_like(m), torch.exp(s_t - m_new))
        u = u * old + new
        w = w * old[..., None] + new[..., None] * v_t
        m = m_new
        ms.append(m)
        us.append(u)
        ws.append(w)
    return torch.stack(ms, 1), torch.stack(us, 1), torch.stack(ws, 1)


def draw(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def finite_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(B, H, generator=g, dtype=torch.float64)
    u = 0.5 + torch.rand(B, H, generator=g, dtype=torch.float64)
    return m, u, torch.randn(B, H, D, generator=g, dtype=torch.float64)


def empty_state():
    z = torch.zeros(B, H, dtype=torch.float64)
    return torch.full_like(z, NEG_INF), z, torch.zeros(B, H, D, dtype=torch.float64)


def assert_states_close(got, want):
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **F64)


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
@pytest.mark.parametrize("seq_len", [1, 2, 3, 8, 13, 33])
def test_forms_equal_reference(form, seq_len):
    s, v = draw(B, seq_len, H, seed=1, scale=2.0), draw(B, seq_len, H, D, seed=2)
    for state in (finite_state(3), empty_state()):
        assert_states_close(form(s, v, state), reference(s, v, state))


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
def test_empty_state_gives_plain_causal_softmax_attention(form):
    s, v = draw(B, 9, H, seed=4, scale=3.0), draw(B, 9, H, D, seed=5)
    m, u, w = form(s, v, empty_state())
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    scores = s.transpose(1, 2)[..., None, :].expand(B, H, 9, 9).masked_fill(~causal, NEG_INF)
    attn = torch.softmax(scores, dim=-1)  # (B, H, T, T)
    want = torch.einsum("bhts,bshd->bthd", attn, v)
    torch.testing.assert_close(softmax_readout(u, w), want, **F64)
    torch.testing.assert_close(m, torch.cummax(s, dim=1).values, **F64)


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
def test_skipped_steps_leave_the_state_unchanged(form):
    s, v = draw(B, 12, H, seed=6), draw(B, 12, H, D, seed=7)
    s[0, :5] = NEG_INF  # leading skips
    s[1, 3:7] = NEG_INF  # a hole
    s[2] = NEG_INF  # nothing real at all
    for state in (finite_state(8), empty_state()):
        m, u, w = form(s, v, state)
        assert_states_close((m, u, w), reference(s, v, state))
        assert torch.isfinite(softmax_readout(u, w)).all()
        # the all-skipped row ends where it started
        assert_states_close((m[2, -1], u[2, -1], w[2, -1]), tuple(t[2] for t in state))
    # the empty prefix reads out as 0, not 0/0
    m, u, w = form(s, v, empty_state())
    assert (u[0, :5] == 0).all() and (softmax_readout(u, w)[0, :5] == 0).all()


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
def test_large_scores_do_not_overflow(form):
    s, v = draw(B, 10, H, seed=9, scale=800.0), draw(B, 10, H, D, seed=10)
    m, u, w = form(s, v, finite_state(11))
    assert torch.isfinite(u).all() and torch.isfinite(w).all()
    assert_states_close((m, u, w), reference(s, v, finite_state(11)))


def test_combine_is_associative_with_the_empty_element_as_identity():
    def element(seed):
        m, u, w = finite_state(seed)
        return m, u, w

    a, b, c = element(12), element(13), element(14)
    left = softmax_combine(softmax_combine(a, b), c)
    right = softmax_combine(a, softmax_combine(b, c))
    assert_states_close(left, right)
    empty = empty_state()
    assert_states_close(softmax_combine(empty, a), a)
    assert_states_close(softmax_combine(a, empty), a)
    m, u, w = softmax_combine(empty, empty)
    assert torch.isinf(m).all() and (u == 0).all() and (w == 0).all()


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
def test_gradients_equal_the_reference(form):
    s0, v0 = draw(B, 11, H, seed=15), draw(B, 11, H, D, seed=16)
    state0 = finite_state(17)
    w_o = draw(B, 11, H, D, seed=18)

    def grads(fn):
        s = s0.clone().requires_grad_(True)
        v = v0.clone().requires_grad_(True)
        state = tuple(t.clone().requires_grad_(True) for t in state0)
        m, u, w = fn(s, v, state)
        loss = (softmax_readout(u, w) * w_o).sum() + (m[:, -1] ** 2).sum() + (u[:, -1] ** 2).sum()
        return torch.autograd.grad(loss, (s, v, *state))

    for got, want in zip(grads(form), grads(reference)):
        torch.testing.assert_close(got, want, **F64)


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
def test_gradients_are_finite_from_the_empty_state_with_skips(form):
    s = draw(B, 7, H, seed=19).requires_grad_(True)
    v = draw(B, 7, H, D, seed=20).requires_grad_(True)
    skip = torch.zeros(B, 7, H, dtype=torch.bool)
    skip[0, :3] = True
    s_in = torch.where(skip, torch.full_like(s, NEG_INF), s)
    m, u, w = form(s_in, v, empty_state())
    (softmax_readout(u, w).sum() + u[:, -1].sum()).backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(v.grad).all()
    assert (s.grad[skip] == 0).all()


@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
def test_gradcheck(form):
    s = draw(2, 5, 1, seed=21).requires_grad_(True)
    v = draw(2, 5, 1, 2, seed=22).requires_grad_(True)
    m0, u0, w0 = finite_state(23)
    m0, u0 = (t[:2, :1].clone().requires_grad_(True) for t in (m0, u0))
    w0 = w0[:2, :1, :2].clone().requires_grad_(True)

    def fn(s, v, m0, u0, w0):
        m, u, w = form(s, v, (m0, u0, w0))
        return softmax_readout(u, w), m[:, -1], u[:, -1], w[:, -1]

    assert torch.autograd.gradcheck(fn, (s, v, m0, u0, w0))


def test_dispatch_and_bad_shapes():
    s, v = draw(B, 4, H, seed=24), draw(B, 4, H, D, seed=25)
    for mode in MODES:
        assert_states_close(
            softmax_scan(s, v, finite_state(), mode), reference(s, v, finite_state())
        )
    with pytest.raises(ValueError, match="mode must be"):
        softmax_scan(s, v, finite_state(), "nope")
    with pytest.raises(ValueError, match="v"):
        softmax_scan(s, v[..., 0], finite_state())
    with pytest.raises(ValueError, match="w0"):
        m, u, w = finite_state()
        softmax_scan(s, v, (m, u, w[..., :-1]))
