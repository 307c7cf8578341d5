"""statewise.ops.mlstm: the three forms against a float64 loop of the unstabilised equations."""

from __future__ import annotations

import pytest
import torch

from statewise.ops.mlstm import (
    MODES,
    mlstm,
    mlstm_chunk,
    mlstm_parallel,
    mlstm_recurrent,
    mlstm_step,
)

F64 = dict(rtol=1e-10, atol=1e-12)

FORMS = {
    "recurrent": lambda *a: mlstm_recurrent(*a),
    "parallel": lambda *a: mlstm_parallel(*a),
    "chunk1": lambda *a: mlstm_chunk(*a, chunk_size=1),
    "chunk3": lambda *a: mlstm_chunk(*a, chunk_size=3),
    "chunk4": lambda *a: mlstm_chunk(*a, chunk_size=4),
    "chunk64": lambda *a: mlstm_chunk(*a, chunk_size=64),
}


def reference(q, k, v, log_i, log_f, state, f_sign=None):
    """The paper's mLSTM without stabilisation, in the true scale, one step at a time:
    C_t = f_t C_{t-1} + i_t k_t^T v_t, n_t = f_t n_{t-1} + i_t k_t,
    h_t = q_t C_t / max(|q_t n_t|, 1),
    with f_t = sign * exp(log_f), i_t = exp(log_i), and the stabiliser
    m_t = max(log|f_t| + m_{t-1}, log i_t) tracked alongside, to report (e^-m C, e^-m n, m).
    """
    batch, heads, seq_len, d_k = q.shape
    d_v = v.shape[-1]
    if state is None:
        c = torch.zeros(batch, heads, d_k, d_v, dtype=q.dtype)
        n = torch.zeros(batch, heads, d_k, dtype=q.dtype)
        m = torch.zeros(batch, heads, dtype=q.dtype)
    else:
        c, n, m = state
    c_true, n_true = c * torch.exp(m)[..., None, None], n * torch.exp(m)[..., None]
    hs = []
    for t in range(seq_len):
        f = torch.exp(log_f[:, :, t])
        if f_sign is not None:
            f = f * f_sign[:, :, t]
        i = torch.exp(log_i[:, :, t])
        k_t, v_t, q_t = k[:, :, t], v[:, :, t], q[:, :, t]
        c_true = f[..., None, None] * c_true + i[..., None, None] * torch.einsum(
            "bhk,bhv->bhkv", k_t, v_t
        )
        n_true = f[..., None] * n_true + i[..., None] * k_t
        m = torch.maximum(log_f[:, :, t] + m, log_i[:, :, t])
        num = torch.einsum("bhk,bhkv->bhv", q_t, c_true)
        den = torch.einsum("bhk,bhk->bh", q_t, n_true).abs().clamp(min=1.0)
        hs.append(num / den[..., None])
    h = torch.stack(hs, dim=2) if hs else torch.zeros(batch, heads, 0, d_v, dtype=q.dtype)
    return h, (c_true * torch.exp(-m)[..., None, None], n_true * torch.exp(-m)[..., None], m)


def problem(seq_len, batch=2, heads=3, d_k=4, d_v=5, seed=0, signs=False, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k = randn(batch, heads, seq_len, d_k), randn(batch, heads, seq_len, d_k) / d_k**0.5
    v = randn(batch, heads, seq_len, d_v)
    log_i = randn(batch, heads, seq_len)
    log_f = torch.nn.functional.logsigmoid(randn(batch, heads, seq_len) + 1.0)
    state = (randn(batch, heads, d_k, d_v), randn(batch, heads, d_k), 0.5 * randn(batch, heads))
    sign = None
    if signs:
        sign = torch.where(randn(batch, heads, seq_len) < 0, -1.0, 1.0).to(torch.float64)
    cast = (lambda t: t.to(dtype)) if dtype != torch.float64 else (lambda t: t)
    args = [cast(t) for t in (q, k, v, log_i, log_f)]
    return (*args, tuple(cast(t) for t in state), None if sign is None else cast(sign))


def assert_result_close(got, want, **tol):
    torch.testing.assert_close(got[0], want[0], **tol)
    for a, b in zip(got[1], want[1]):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("signs", [False, True], ids=["positive", "signed"])
@pytest.mark.parametrize("seq_len", [0, 1, 7, 13])
@pytest.mark.parametrize("form", list(FORMS))
def test_forms_equal_the_reference(form, seq_len, signs):
    q, k, v, log_i, log_f, state, sign = problem(seq_len, signs=signs)
    want = reference(q, k, v, log_i, log_f, state, sign)
    assert_result_close(FORMS[form](q, k, v, log_i, log_f, state, sign), want, **F64)
    # state None is the zero state (m = 0)
    want0 = reference(q, k, v, log_i, log_f, None, sign)
    assert_result_close(FORMS[form](q, k, v, log_i, log_f, None, sign), want0, **F64)


@pytest.mark.parametrize("form", list(FORMS))
def test_pieces_equal_whole(form):
    q, k, v, log_i, log_f, state, sign = problem(13, signs=True)
    whole = FORMS[form](q, k, v, log_i, log_f, state, sign)
    hs, s = [], state
    for piece in ((0, 5), (5, 6), (6, 13)):
        sl = slice(*piece)
        h, s = FORMS[form](
            q[:, :, sl], k[:, :, sl], v[:, :, sl], log_i[..., sl], log_f[..., sl], s, sign[..., sl]
        )
        hs.append(h)
    assert_result_close((torch.cat(hs, dim=2), s), whole, **F64)


def test_output_does_not_depend_on_the_stabiliser():
    """(C, n, m) and (e^-d C, e^-d n, m + d) are the same true state: same h."""
    q, k, v, log_i, log_f, (c, n, m), _ = problem(9)
    shift = torch.full_like(m, 3.0)
    moved = (c * torch.exp(-shift)[..., None, None], n * torch.exp(-shift)[..., None], m + shift)
    for mode in MODES:
        h1, _ = mlstm(q, k, v, log_i, log_f, (c, n, m), mode=mode, chunk_size=4)
        h2, _ = mlstm(q, k, v, log_i, log_f, moved, mode=mode, chunk_size=4)
        torch.testing.assert_close(h1, h2, **F64)


@pytest.mark.parametrize("mode", MODES)
def test_skipped_steps_leave_the_state_unchanged(mode):
    """log_i = -inf, log_f = 0 (the layers' padding) is an exact no-op on (C, n, m)."""
    q, k, v, log_i, log_f, state, sign = problem(8, signs=True)
    skip = torch.zeros(q.shape[:3], dtype=torch.bool)
    skip[:, :, 2:5] = True
    skip[0, :, :] = True  # one sequence skips everything
    log_i = torch.where(skip, float("-inf"), log_i)
    log_f = torch.where(skip, 0.0, log_f)
    sign = torch.where(skip, 1.0, sign)
    keep = ~skip[1, 0]  # the steps row 1 keeps
    want = reference(
        q[:, :, keep],
        k[:, :, keep],
        v[:, :, keep],
        log_i[..., keep],
        log_f[..., keep],
        state,
        sign[..., keep],
    )
    got = mlstm(q, k, v, log_i, log_f, state, sign, mode=mode, chunk_size=3)
    torch.testing.assert_close(got[0][1:, :, keep], want[0][1:], **F64)
    for a, b, s in zip(got[1], want[1], state):
        torch.testing.assert_close(a[1:], b[1:], **F64)
        torch.testing.assert_close(a[0], s[0], rtol=0, atol=0)  # all skipped: bit for bit


@pytest.mark.parametrize("mode", MODES)
def test_gradients_match_the_reference_and_stay_finite_with_skips(mode):
    q, k, v, log_i, log_f, state, sign = problem(7, signs=True)
    skip = torch.zeros(q.shape[:3], dtype=torch.bool)
    skip[:, :, 1] = True
    skip[:, :, 5:] = True
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(2, 3, 7, 5, generator=gen, dtype=torch.float64)

    def grads(fn):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, log_i, log_f, *state)]
        q_, k_, v_, li, lf, c, n, m = leaves
        li = torch.where(skip, float("-inf"), li)
        lf = torch.where(skip, 0.0, lf)
        h, final = fn(q_, k_, v_, li, lf, (c, n, m), sign)
        loss = (h * w).sum() + sum((t**2).sum() for t in final)
        return torch.autograd.grad(loss, leaves)

    want = grads(reference)
    got = grads(lambda *a: mlstm(*a, mode=mode, chunk_size=3))
    for g, e in zip(got, want):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, e, **F64)


@pytest.mark.parametrize("mode", MODES)
def test_large_gates_do_not_overflow_in_float32(mode):
    """Input gates up to e^100 and strong forgetting: finite, and float32 close to float64."""
    q, k, v, log_i, log_f, (c, n, m), _ = problem(40)
    # q.k >= 0, n >= 0 and f > 0: no cancellation in q.n, so the float32 error measures the
    # arithmetic and not the conditioning of the denominator
    args32 = [t.float() for t in (q.abs(), k.abs(), v, log_i * 30.0 + 20.0, log_f * 20.0)]
    state32 = tuple(t.float() for t in (c, n.abs(), m))
    # the float64 run starts from the same (float32-rounded) numbers, so only the arithmetic differs
    want = mlstm_recurrent(*(t.double() for t in args32), tuple(t.double() for t in state32))
    got = mlstm(*args32, state32, mode=mode, chunk_size=16)
    assert torch.isfinite(got[0]).all()
    scale = want[0].abs().max().item()
    # float32 eps 1.2e-7; exponents of size ~100 carry ~100 eps into exp(), and an output
    # sums up to 40 such terms: 1e-5 relative to the output scale
    assert (got[0].double() - want[0]).abs().max().item() <= 1e-5 * scale
    torch.testing.assert_close(got[1][2].double(), want[1][2], rtol=1e-6, atol=1e-5)


def test_step_equals_recurrent():
    q, k, v, log_i, log_f, state, sign = problem(5, signs=True)
    want = mlstm_recurrent(q, k, v, log_i, log_f, state, sign)
    s, hs = state, []
    for t in range(5):
        h, s = mlstm_step(
            q[:, :, t], k[:, :, t], v[:, :, t], log_i[..., t], log_f[..., t], s, sign[..., t]
        )
        hs.append(h)
    assert_result_close((torch.stack(hs, dim=2), s), want, **F64)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode):
    q, k, v, log_i, log_f, state, sign = problem(5, batch=1, heads=2, d_k=2, d_v=3, signs=True)
    args = [t.clone().requires_grad_(True) for t in (q, k, v, log_i, log_f, *state)]

    def fn(q, k, v, li, lf, c, n, m):
        h, (c, n, m) = mlstm(q, k, v, li, lf, (c, n, m), sign, mode=mode, chunk_size=2)
        return h, c, n, m

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6)


def test_bad_arguments_raise():
    q, k, v, log_i, log_f, state, _ = problem(4)
    with pytest.raises(ValueError, match="mode must be"):
        mlstm(q, k, v, log_i, log_f, mode="scan")
    with pytest.raises(ValueError, match="q and k"):
        mlstm(q, k[..., :-1], v, log_i, log_f)
    with pytest.raises(ValueError, match="v must be"):
        mlstm(q, k, v[:, :, :-1], log_i, log_f)
    with pytest.raises(ValueError, match="log_f must be"):
        mlstm(q, k, v, log_i, log_f[..., :-1])
    with pytest.raises(ValueError, match="state must be"):
        mlstm(q, k, v, log_i, log_f, (state[0], state[1], state[2][:1]))
    with pytest.raises(ValueError, match="chunk_size"):
        mlstm(q, k, v, log_i, log_f, chunk_size=0)
