"""statewise.ops.delta_rule: both forms against a float64 loop written here, values and
gradients, with and without the per-step decay, beta in [0, 1] and in [0, 2]."""

from __future__ import annotations

import pytest
import torch

from statewise.ops.delta_rule import delta_rule, delta_rule_recurrent

F64 = dict(rtol=1e-10, atol=1e-12)

# chunk sizes that divide T = 13 (1, 13), that do not (3, 4, 5), and longer than T (64)
FORMS = {
    "recurrent": dict(mode="recurrent"),
    **{f"chunk{c}": dict(mode="chunk", chunk_size=c) for c in (1, 3, 4, 5, 13, 64)},
}
# beta in [0, 1] (DeltaNet) or [0, 2] (negative eigenvalues), with or without decay
VARIANTS = ["plain", "negative", "gated", "gated+negative"]


def reference(q, k, v, beta, g, state):
    """S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T (S: d_k x d_v), o_t =
    S_t^T q_t, a_t = exp(g_t): the matrices built and multiplied, one step at a time."""
    batch, heads, seq_len, d_k = q.shape
    eye = torch.eye(d_k, dtype=q.dtype)
    s = state
    out = []
    for t in range(seq_len):
        k_t, b_t = k[:, :, t], beta[:, :, t, None, None]
        a_t = 1.0 if g is None else torch.exp(g[:, :, t])[..., None, None]
        transition = a_t * (eye - b_t * k_t[..., :, None] * k_t[..., None, :])
        s = transition @ s + b_t * k_t[..., :, None] * v[:, :, t, None, :]
        out.append((s.transpose(-1, -2) @ q[:, :, t, :, None]).squeeze(-1))
    return torch.stack(out, dim=2), s


def problem(seq_len, variant="plain", batch=2, heads=3, d_k=4, d_v=5, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, v = randn(batch, heads, seq_len, d_k), randn(batch, heads, seq_len, d_v)
    k = torch.nn.functional.normalize(randn(batch, heads, seq_len, d_k), dim=-1)
    beta = torch.rand(batch, heads, seq_len, generator=gen, dtype=torch.float64)
    if "negative" in variant:
        beta = 2 * beta
    g = None
    if "gated" in variant:
        g = -2 * torch.rand(batch, heads, seq_len, generator=gen, dtype=torch.float64)
    return q, k, v, beta, g, randn(batch, heads, d_k, d_v)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("form", FORMS)
def test_form_equals_the_loop(form, variant):
    q, k, v, beta, g, state = problem(13, variant)
    o, s = delta_rule(q, k, v, beta, g, state, **FORMS[form])
    o_ref, s_ref = reference(q, k, v, beta, g, state)
    torch.testing.assert_close(o, o_ref, **F64)
    torch.testing.assert_close(s, s_ref, **F64)


@pytest.mark.parametrize("form", ["recurrent", "chunk4"])
def test_no_initial_state_is_zeros_and_empty_sequence_passes_the_state(form):
    q, k, v, beta, g, state = problem(6, "gated")
    o, s = delta_rule(q, k, v, beta, g, None, **FORMS[form])
    o_ref, s_ref = reference(q, k, v, beta, g, torch.zeros_like(state))
    torch.testing.assert_close(o, o_ref, **F64)
    torch.testing.assert_close(s, s_ref, **F64)
    empty = [x[:, :, :0] for x in (q, k, v, beta, g)]
    o, s = delta_rule(*empty, state, **FORMS[form])
    assert o.shape == (2, 3, 0, 5)
    torch.testing.assert_close(s, state, rtol=0, atol=0)


@pytest.mark.parametrize("form", ["recurrent", "chunk4"])
def test_beta_zero_and_g_zero_steps_leave_the_state_unchanged(form):
    """What masked steps rely on: beta = 0 and g = 0 is the identity, whatever k and v."""
    q, k, v, beta, g, state = problem(8, "gated+negative")
    beta[:, :, 2:6], g[:, :, 2:6] = 0.0, 0.0
    kept = [x[:, :, [0, 1, 6, 7]] for x in (q, k, v, beta, g)]
    _, s = delta_rule(q, k, v, beta, g, state, **FORMS[form])
    _, s_kept = delta_rule(*kept, state, **FORMS[form])
    torch.testing.assert_close(s, s_kept, **F64)


def _grads(run, inputs, w_o, w_s):
    leaves = [x.detach().clone().requires_grad_(True) if x is not None else None for x in inputs]
    o, s = run(*leaves)
    loss = (o * w_o).sum() + (s * w_s).sum()
    wrt = [x for x in leaves if x is not None]
    return torch.autograd.grad(loss, wrt)


@pytest.mark.parametrize("variant", ["plain", "gated+negative"])
@pytest.mark.parametrize("form", ["recurrent", "chunk1", "chunk4", "chunk5", "chunk64"])
def test_gradients_equal_the_loops(form, variant):
    """Gradients of q, k, v, beta, g and S_0, the recurrent form's hand-written backward
    included (T = 13: stretches of 4, 4, 4, 1 steps), against autograd through the loop."""
    inputs = problem(13, variant)
    gen = torch.Generator().manual_seed(9)
    w_o = torch.randn(2, 3, 13, 5, generator=gen, dtype=torch.float64)
    w_s = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    expected = _grads(reference, inputs, w_o, w_s)
    got = _grads(lambda *x: delta_rule(*x, **FORMS[form]), inputs, w_o, w_s)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, **F64)


@pytest.mark.parametrize("used", ["output", "state"])
def test_recurrent_backward_when_only_one_result_is_used(used):
    q, k, v, beta, g, state = (
        x.requires_grad_(True) for x in problem(7, "gated+negative", batch=1, heads=1)
    )
    o, s = delta_rule_recurrent(q, k, v, beta, g, state)
    o_ref, s_ref = reference(q, k, v, beta, g, state)
    if used == "output":
        loss, loss_ref = (o**2).sum(), (o_ref**2).sum()
    else:
        loss, loss_ref = s.sum(), s_ref.sum()
    wrt = (q, k, v, beta, g, state)
    got = torch.autograd.grad(loss, wrt)
    expected = torch.autograd.grad(loss_ref, wrt, allow_unused=True)  # S_T does not read q
    for a, e, x in zip(got, expected, wrt):
        torch.testing.assert_close(a, torch.zeros_like(x) if e is None else e, **F64)


@pytest.mark.parametrize("form", ["recurrent", "chunk3"])
def test_gradcheck(form):
    inputs = problem(5, "gated+negative", batch=1, heads=2, d_k=3, d_v=2)
    args = tuple(x.clone().requires_grad_(True) for x in inputs)
    assert torch.autograd.gradcheck(lambda *x: delta_rule(*x, **FORMS[form]), args)


def test_recurrent_backward_keeps_about_sqrt_t_states():
    """The loop saves its inputs, the final state and every ceil(sqrt(T))-th state (20 of
    400 here), not a graph of per-step states. Saved sizes are counted by autograd's pack
    hook; autograd through the loop (the reference) holds over T states."""
    batch, heads, seq_len, d = 1, 2, 400, 8
    inputs = [x.requires_grad_(True) for x in problem(seq_len, "gated", batch, heads, d, d)]

    def saved_numel(run) -> int:
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: sizes.append(t.numel()) or t, lambda t: t
        ):
            run(*inputs)
        return sum(sizes)

    state_numel = batch * heads * d * d
    step_inputs = batch * heads * seq_len * (3 * d + 2)  # q, k, v, beta, a
    assert saved_numel(delta_rule_recurrent) <= step_inputs + (20 + 1) * state_numel
    assert saved_numel(reference) > seq_len * state_numel


def test_float32_chunk_form_stays_close_over_long_sequences():
    """Beta in [0, 2] with unit keys and decays: the transitions have norm <= 1, so the
    float32 chunk form keeps float32 accuracy over T = 512 (no error growth with T);
    1e-4 relative to the outputs' scale, as the contract's float32 tolerance."""
    q, k, v, beta, g, state = problem(512, "gated+negative", batch=1, heads=2, d_k=16, d_v=16)
    g = g / 20  # long memories: decays from 0.9 to 1
    o_ref, s_ref = reference(q, k, v, beta, g, state)
    for form in ("chunk64", "recurrent"):
        o, s = delta_rule(*(x.float() for x in (q, k, v, beta, g, state)), **FORMS[form])
        assert (o.double() - o_ref).abs().max() <= 1e-4 * o_ref.abs().max()
        assert (s.double() - s_ref).abs().max() <= 1e-4 * s_ref.abs().max()


def test_bad_arguments_raise():
    q, k, v, beta, g, state = problem(4, "gated")
    with pytest.raises(ValueError, match="beta must be"):
        delta_rule(q, k, v, beta[:, :, :3], g, state)
    with pytest.raises(ValueError, match="g must be"):
        delta_rule(q, k, v, beta, g[:, :1], state)
    with pytest.raises(ValueError, match="chunk_size"):
        delta_rule(q, k, v, beta, g, state, mode="chunk", chunk_size=0)
    with pytest.raises(ValueError, match="mode must be"):
        delta_rule(q, k, v, beta, g, state, mode="parallel")
