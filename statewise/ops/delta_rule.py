"""The (gated) delta rule, multi-head, in two equal forms: a loop over time and chunkwise.

    S'_t = a_t S_{t-1}                                   a_t = exp(g_t), scalar per head
    S_t  = (I - beta_t k_t k_t^T) S'_t + beta_t k_t v_t^T    (S: d_k x d_v per head)
    o_t  = S_t^T q_t                                     (as a row: q_t S_t)

with q, k: (B, H, T, d_k), v: (B, H, T, d_v), beta: (B, H, T), log-decays g: (B, H, T)
(<= 0; None for the ungated rule, a_t = 1) and an initial state S_0: (B, H, d_k, d_v),
rows indexed by key channels as in :mod:`statewise.ops.linear_attention`. This is DeltaNet
(Yang et al. 2024; the papers write S^T: S_t = S_{t-1}(I - beta k k^T) + beta v k^T) and,
with g, Gated DeltaNet (Yang et al. 2025). Written as a correction, the update is
u_t = beta_t (v_t - S'_t^T k_t) (the "new value": the target minus what the memory
recalls for k_t), S_t = S'_t + k_t u_t^T. A step with beta = 0 and g = 0 is the identity
(masked steps and the padding of the chunk form use that).

Forms, each returning (o (B, H, T, d_v), S_T):

- :func:`delta_rule_recurrent`: the loop over time. Its backward is written out
  (:class:`_DeltaRuleLoop`) and keeps only every ~sqrt(T)-th state: the states of one
  stretch are recomputed from its first when the backward reaches it, so the memory is
  O((T / m + m) d_k d_v) per head with m = ceil(sqrt(T)), not the T states (times the
  handful of intermediates per step) an autograd graph of the loop would hold. Cost:
  the forward once more inside the backward.
- :func:`delta_rule_chunk`: chunkwise (Yang et al. 2024, the WY / UT representation).
  Inside a chunk of C steps, with Gamma_t = exp(g_1 + ... + g_t) from the chunk start and
  D[t, s] = Gamma_t / Gamma_s = exp(g_{s+1} + ... + g_t) for s <= t (segment sums,
  :func:`statewise.ops.linear_attention.segsum`: every exponent <= 0), unrolling S_t =
  a_t S_{t-1} + k_t u_t^T gives S_t = Gamma_t S_0 + sum_{s<=t} D[t, s] k_s u_s^T, hence

      u_t = beta_t (v_t - Gamma_t S_0^T k_t - sum_{s<t} D[t, s] (k_t . k_s) u_s)

  i.e. (I + A) U = diag(beta) (V - diag(Gamma) K S_0), A = tril(diag(beta) (K K^T * D), -1)
  strictly lower. With the UT transform T = (I + A)^{-1} diag(beta) (the inverse of one
  unit lower triangular matrix per chunk, by block halving in GEMMs,
  :func:`statewise.ops.triangular.unit_lower_inverse`):

      U   = U0 - W S_0,      U0 = T V,    W = T (Gamma * K)
      O   = (Gamma * Q) S_0 + (Q K^T * D) U
          = (Gamma * Q - (Q K^T * D) W) S_0 + (Q K^T * D) U0
      S_C = Gamma_C S_0 + (K * D[C, :])^T U
          = (Gamma_C I - (K * D[C, :])^T W) S_0 + (K * D[C, :])^T U0

  U0, W and the chunk transitions (second lines) are batched GEMMs over all chunks at once;
  between chunks the state passes by one (d_k x d_k) (d_k x d_v) GEMM per chunk,
  S_n = M_n S_{n-1} + A_n; then U and O (first lines) are two more batched GEMMs against
  the stacked entering states, each with its addition fused (``baddbmm``). Autograd
  goes through it (no hand-written backward): it holds the chunk matrices, O(T (C + d))
  per head, and the N = T / C entering states.

Keys should have norm <= 1 (the layers L2-normalise them) and beta in [0, 2]: then
I - beta k k^T has eigenvalues 1 (d_k - 1 times) and 1 - beta |k|^2 in [-1, 1] and norm
<= 1, so the recurrence does not amplify rounding errors; the float32 chunk form stays
within 1e-4 of a float64 loop over 512 steps with beta in (0, 2)
(tests/ops/test_delta_rule.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from statewise.ops.linear_attention import check_qkv, matrix_state, segsum
from statewise.ops.precision import float32_recurrence
from statewise.ops.triangular import unit_lower_inverse

MODES = ("recurrent", "chunk")


def _check(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None,
    initial_state: torch.Tensor | None,
) -> torch.Tensor:
    check_qkv(q, k, v)
    if beta.shape != q.shape[:3]:
        raise ValueError(f"beta must be (B, H, T) = {tuple(q.shape[:3])}, got {tuple(beta.shape)}")
    if g is not None and g.shape != q.shape[:3]:
        raise ValueError(f"g must be (B, H, T) = {tuple(q.shape[:3])}, got {tuple(g.shape)}")
    return matrix_state(q, v, initial_state)


# ------------------------------------------------------------------ the loop


def _advance(
    state: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    beta_t: torch.Tensor,
    a_t: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step on flattened heads: state (N, d_k, d_v), k_t (N, d_k), v_t (N, d_v),
    beta_t and a_t (N,). Returns (S'_t = a_t S_{t-1}, r_t = v_t - S'_t^T k_t, S_t)."""
    decayed = state if a_t is None else state * a_t[:, None, None]
    residual = v_t - torch.bmm(k_t.unsqueeze(1), decayed).squeeze(1)
    new = torch.baddbmm(decayed, k_t.unsqueeze(2), (beta_t.unsqueeze(1) * residual).unsqueeze(1))
    return decayed, residual, new


def _time_major(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, ...) -> (T, B H, ...), contiguous: each step's slice is one block."""
    batch, heads, seq_len = x.shape[:3]
    return x.reshape(batch * heads, seq_len, *x.shape[3:]).transpose(0, 1).contiguous()


def _head_major(x: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
    """(T, B H, ...) -> (B, H, T, ...)."""
    seq_len = x.shape[0]
    return x.transpose(0, 1).reshape(batch, heads, seq_len, *x.shape[2:])


class _DeltaRuleLoop(torch.autograd.Function):
    """The loop over time with a backward that recomputes the states stretch by stretch.

    Backward of one step (G = dL/dS_t carried from later steps, dL/do_t given): with
    S'_t, r_t = v_t - S'_t^T k_t and u_t = beta_t r_t,

        G      += q_t (dL/do_t)^T                 dq_t = S_t dL/do_t
        du      = G^T k_t                         dk_t = G u_t
        dbeta_t = du . r_t                        dv_t = beta_t du
        G'      = G - beta_t k_t du^T             dk_t += -beta_t S'_t du
        dg_t    = <G', S'_t>                      dL/dS_{t-1} = a_t G'
    """

    @staticmethod
    def forward(ctx, q, k, v, beta, g, state):
        batch, heads, seq_len = q.shape[:3]
        q_, k_, v_, beta_ = (_time_major(x) for x in (q, k, v, beta))
        a_ = None if g is None else _time_major(g).exp()
        stride = max(1, math.isqrt(seq_len - 1) + 1)  # ceil(sqrt(T))
        s = state.reshape(batch * heads, *state.shape[2:])
        kept, outs = [], []
        for t in range(seq_len):
            if t % stride == 0:
                kept.append(s)
            _, _, s = _advance(s, k_[t], v_[t], beta_[t], None if a_ is None else a_[t])
            outs.append(torch.bmm(q_[t].unsqueeze(1), s).squeeze(1))
        ctx.save_for_backward(q_, k_, v_, beta_, a_, s, *kept)
        ctx.shape = (batch, heads, stride, g is not None)
        o = _head_major(torch.stack(outs), batch, heads)
        return o, s.reshape(state.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_o, grad_state):
        q_, k_, v_, beta_, a_, final, *kept = ctx.saved_tensors
        batch, heads, stride, gated = ctx.shape
        seq_len = q_.shape[0]
        if grad_o is None:
            grad_o = final.new_zeros(seq_len, final.shape[0], final.shape[-1])
        else:
            grad_o = _time_major(grad_o)
        carried = (
            torch.zeros_like(final) if grad_state is None else grad_state.reshape(final.shape)
        ).clone()
        dq, dk, dv, dbeta = (torch.empty_like(x) for x in (q_, k_, v_, beta_))
        dg = torch.empty_like(a_) if gated else None
        for start in reversed(range(0, seq_len, stride)):
            stop = min(start + stride, seq_len)
            states = [kept[start // stride]]  # S_{start-1}, then S_start .. S_{stop-1}
            steps = []
            for t in range(start, stop):
                a_t = None if a_ is None else a_[t]
                decayed, residual, s = _advance(states[-1], k_[t], v_[t], beta_[t], a_t)
                states.append(s)
                steps.append((decayed, residual))
            for t in reversed(range(start, stop)):
                decayed, residual = steps[t - start]
                s_t, k_t, b_t, do_t = states[t - start + 1], k_[t], beta_[t], grad_o[t]
                carried.baddbmm_(q_[t].unsqueeze(2), do_t.unsqueeze(1))
                dq[t] = torch.bmm(s_t, do_t.unsqueeze(2)).squeeze(2)
                du = torch.bmm(k_t.unsqueeze(1), carried).squeeze(1)  # (N, d_v)
                u = b_t.unsqueeze(1) * residual
                dbeta[t] = (du * residual).sum(-1)
                dv[t] = b_t.unsqueeze(1) * du
                dp = -dv[t]  # dL/d(S'^T k)
                grad_k = torch.bmm(carried, u.unsqueeze(2)).squeeze(2)
                carried.baddbmm_(k_t.unsqueeze(2), dp.unsqueeze(1))  # now dL/dS'_t
                dk[t] = grad_k + torch.bmm(decayed, dp.unsqueeze(2)).squeeze(2)
                if gated:
                    dg[t] = (carried * decayed).sum((-1, -2))
                    carried.mul_(a_[t][:, None, None])
        grad_state = carried.reshape(batch, heads, *carried.shape[1:])
        return (
            _head_major(dq, batch, heads),
            _head_major(dk, batch, heads),
            _head_major(dv, batch, heads),
            _head_major(dbeta, batch, heads),
            None if dg is None else _head_major(dg, batch, heads),
            grad_state,
        )


def delta_rule_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loop over time (module docstring); memory-light backward. Returns (o, S_T)."""
    state = _check(q, k, v, beta, g, initial_state)
    if q.shape[2] == 0:
        return v.new_zeros(v.shape), state
    inputs = (q, k, v, beta, g, state)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs):
        return _DeltaRuleLoop.apply(*inputs)
    with torch.no_grad():
        return _DeltaRuleLoop.forward(_NoContext(), *inputs)


class _NoContext:
    """Stands in for autograd's ctx when the loop runs without gradients (saves nothing)."""

    def save_for_backward(self, *tensors: torch.Tensor | None) -> None:
        pass


# ------------------------------------------------------------------ chunkwise


def delta_rule_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise form with the UT transform (module docstring). Returns (o, S_T).

    T is padded at the end to a multiple of C = min(chunk_size, T) with q = k = v = 0,
    beta = 0 and g = 0, identity steps. Any positive chunk_size works.
    """
    state = _check(q, k, v, beta, g, initial_state)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    batch, heads, seq_len, d_k = q.shape
    d_v = v.shape[-1]
    if seq_len == 0:
        return v.new_zeros(v.shape), state
    size = min(chunk_size, seq_len)
    n_chunks = -(-seq_len // size)
    pad = n_chunks * size - seq_len
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        beta = F.pad(beta, (0, pad))
        g = None if g is None else F.pad(g, (0, pad))
    # contiguous once: the layers pass head views of (B, T, H d) and every batched product
    # below would otherwise copy its operands again
    q, k = (x.reshape(batch, heads, n_chunks, size, d_k).contiguous() for x in (q, k))
    v = v.reshape(batch, heads, n_chunks, size, d_v).contiguous()
    beta = beta.reshape(batch, heads, n_chunks, size, 1)

    keys_t = k.transpose(-1, -2)
    if g is None:  # D = 1 on and below the diagonal, Gamma = 1
        k_start, q_start, k_end, whole = k, q, k, None
        gram = k @ keys_t  # unit_lower_inverse reads its strictly lower triangle only
        scores = (q @ keys_t).tril_()  # (Q K^T * D)
    else:
        g = g.reshape(batch, heads, n_chunks, size)
        decay = segsum(g).exp()  # (B, H, N, C, C): D[t, s], 0 above the diagonal
        from_start = g.cumsum(-1).exp().unsqueeze(-1)  # Gamma_t, (B, H, N, C, 1)
        k_start, q_start = k * from_start, q * from_start
        k_end = k * decay[..., -1, :].unsqueeze(-1)  # k_s D[C, s]
        whole = from_start[..., -1, :]  # Gamma_C, (B, H, N, 1)
        gram = (k @ keys_t) * decay
        scores = (q @ keys_t) * decay
    # T = (I + A)^{-1} diag(beta), A = diag(beta) (K K^T * D) below the diagonal
    solve = unit_lower_inverse(beta * gram) * beta.transpose(-1, -2)
    u0, w = solve @ v, solve @ k_start  # U0 = T V, W = T (Gamma * K)
    k_end_t = k_end.transpose(-1, -2)
    added = k_end_t @ u0  # (K * D[C, :])^T U0, (B, H, N, d_k, d_v)
    eye = torch.eye(d_k, dtype=q.dtype, device=q.device)
    transition = (eye if whole is None else whole.unsqueeze(-1) * eye) - k_end_t @ w
    before = []
    # unbind, not indexing: the backward of N index ops would write N full-size zero grads
    for added_n, transition_n in zip(added.unbind(2), transition.unbind(2)):
        before.append(state)
        state = torch.baddbmm(
            added_n.flatten(0, 1), transition_n.flatten(0, 1), state.flatten(0, 1)
        ).view(state.shape)
    entering = torch.stack(before, dim=2).flatten(0, 2)  # S_0 of every chunk
    u = torch.baddbmm(u0.flatten(0, 2), w.flatten(0, 2), entering, alpha=-1)  # U0 - W S_0
    # O = (Gamma * Q) S_0 + (Q K^T * D) U
    o = torch.baddbmm(scores.flatten(0, 2) @ u, q_start.flatten(0, 2), entering)
    return o.reshape(batch, heads, n_chunks * size, d_v)[:, :, :seq_len], state


@float32_recurrence
def delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    mode: str = "chunk",
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (gated) delta rule in ``mode`` "recurrent" or "chunk".

    q, k: (B, H, T, d_k); v: (B, H, T, d_v); beta: (B, H, T); g: (B, H, T) log-decays
    (<= 0) or None (no decay); initial_state: (B, H, d_k, d_v) or None (zeros). Returns
    (o (B, H, T, d_v), S_T). ``chunk_size`` is used by the chunk form only.
    """
    if mode == "recurrent":
        return delta_rule_recurrent(q, k, v, beta, g, initial_state)
    if mode == "chunk":
        return delta_rule_chunk(q, k, v, beta, g, initial_state, chunk_size)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
