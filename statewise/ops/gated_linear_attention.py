"""Multi-head linear attention with a decay per key channel (gated / GLA-style), in three forms.

    S_t = diag(a_t) S_{t-1} + k_t^T v_t        (S: d_k x d_v per head)
    o_t = q_t S_t                              (inclusive form: GLA, GateLoop)

or, with a per-head "bonus" u (d_k,) as in RWKV-6,

    o_t = q_t (S_{t-1} + diag(u) k_t^T v_t)    (the state update is the same)

with q, k: (B, H, T, d_k), v: (B, H, T, d_v), log-decays g: (B, H, T, d_k) <= 0 and
a_t = exp(g_t), or a_t = sign_t * exp(g_t) when a tensor ``sign`` of +-1 is given (signed
transitions in [-1, 1], for negative eigenvalues, Grazzi et al. 2025). Initial state S_0:
(B, H, d_k, d_v). Unrolled, per key channel c,

    o_t = sum_{s<=t} sum_c q_tc k_sc M_tsc v_s + sum_c q_tc M_t0c (S_0)_c      (inclusive)

with M_tsc = prod_{j=s+1..t} a_jc; with the bonus the sum runs over s < t with the product
over j = s+1 .. t-1, the s = t term is (q_t . (u * k_t)) v_t and S_0 decays up to t-1.

Three equal forms, each returning (o (B, H, T, d_v), S_T):

- :func:`gated_linear_attention_recurrent`: the loop over time; O(T d_k d_v), T Python steps.
- :func:`gated_linear_attention_parallel`: the quadratic form with the full pairwise decay
  tensor M (B, H, d_k, T, T) from :func:`statewise.ops.linear_attention.segsum`; O(T^2 d_k)
  time and memory, a reference form for short sequences.
- :func:`gated_linear_attention_chunk`: chunkwise; within chunks of C steps the pairs
  are handled level by level (below), between chunks the state is passed by a loop of
  T / C steps; all heavy products are batched GEMMs.

Numerical stability of the chunk form (float32 safe for any g <= 0, including -inf):
the usual trick writes M_tsc = exp(b_tc - b_sc) with b the cumulative sum of g, and factors
it as (q_t * exp(b_t)) . (k_s * exp(-b_s)); exp(-b_s) overflows float32 once the decay inside
a chunk passes e^88 (and with data-dependent decays, e.g. RWKV-6's -exp(.), nothing bounds
it). Here every factor is exp of a sum of log-decays that is <= 0:

- pairs (t, s), s < t, inside a chunk: split the chunk in aligned blocks of m = 1, 2, 4,
  ..., C/2 steps (C a power of two). At level m, the pairs with s in the first block and t
  in the second block of an aligned pair of blocks use the boundary r between the two
  blocks as the reference: M_tsc = exp(sum_{j=r+1..t} g_jc) * exp(sum_{j=s+1..r} g_jc),
  the query factor and the key factor. Both exponents are <= 0, so both factors are in
  [0, 1]: nothing overflows, and an underflowed factor flushes to 0 a product that is
  even smaller. Every pair s < t is covered at exactly one level (the one at which s and
  t first fall into different blocks); the diagonal s = t is q_t . k_t (or
  q_t . (u * k_t) with the bonus). Each level is one batched (q k^T) v over its block
  pairs; all levels cost about C^2 (d_k + d_v) / 2 multiply-adds per chunk, half of a dense
  (Q K^T) V over the chunk.
- the chunk's state terms: the query decay from the chunk start, exp(g_1 + ... + g_t), the
  key decay to the chunk end, exp(g_{s+1} + ... + g_C), and the whole-chunk decay: again
  exponents <= 0.
- every exponent is a sum of same-signed terms, built by doubling (a block of 2m steps is
  two blocks of m, so its sums are the halves' sums plus a block total): additions only,
  never the difference of two prefix sums, so there is no cancellation (relative error
  ~ log2(C) eps per exponent however strong the decay), and g = -inf (a hard reset) stays
  exact (no inf - inf).

Gradient of g in the chunk form: with b_t = g_1 + ... + g_t the op depends on g only through
q_t exp(b_t) (exp(b_{t-1}) with the bonus), k_s exp(-b_s) and the final state's factor
exp(b_T); so dL/db_t = q_t * dL/dq_t - k_t * dL/dk_t (the q term moved to t-1 with the
bonus) plus sum_v dL/dS_T * S_T at t = T, and dL/dg_j = sum_{t >= j} dL/db_t. The chunk form
therefore runs its decays without autograd (g detached) and attaches this gradient
(``DecayGrad`` and ``FinalDecayGrad`` of :mod:`statewise.ops.linear_attention`, shared with
the scalar-decay chunk form); dq and dk come from autograd through the stable forward.

Signed transitions: with P_t = prod_{j<=t} sign_j inside a chunk (exact in +-1),
prod_{j=s+1..t} sign_j = P_t P_s, so the signs fold into q (times P_t, or P_{t-1} with the
bonus) and k (times P_s) before the unsigned algorithm, and into the chunk-end factors.

Cost on this machine (torch 2.13, fp32, 1 thread, B8 H4 d_k = d_v = 64, T = 1024, forward
+ backward, under load): chunk 575-655 ms for C = 16 .. 128, the loop about 3 s; the
scalar-decay chunk form of :mod:`statewise.ops.linear_attention` takes 256 ms on the
same sizes (one decay per head needs no levels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from statewise.ops.linear_attention import (
    DecayGrad,
    FinalDecayGrad,
    check_qkv,
    chunk_states,
    matrix_state,
    resolve_compute_dtype,
    segsum,
)
from statewise.ops.precision import float32_recurrence

MODES = ("recurrent", "parallel", "chunk")


# ------------------------------------------------------------------ helpers


def _check(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None,
    bonus: torch.Tensor | None,
    sign: torch.Tensor | None,
) -> torch.Tensor:
    check_qkv(q, k, v)
    if g.shape != q.shape:
        raise ValueError(f"g must be (B, H, T, d_k) = {tuple(q.shape)}, got {tuple(g.shape)}")
    if sign is not None and sign.shape != q.shape:
        raise ValueError(f"sign must be (B, H, T, d_k) = {tuple(q.shape)}, got {sign.shape}")
    heads, d_k = q.shape[1], q.shape[3]
    if bonus is not None and bonus.shape != (heads, d_k):
        raise ValueError(f"bonus must be (H, d_k) = {(heads, d_k)}, got {tuple(bonus.shape)}")
    return matrix_state(q, v, initial_state)


def _shift_down(x: torch.Tensor, fill: float, dim: int = -2) -> torch.Tensor:
    """x moved one step later along ``dim`` (time), ``fill`` at the first step: x_{t-1}."""
    first = torch.full_like(x.narrow(dim, 0, 1), fill)
    return torch.cat([first, x.narrow(dim, 0, x.shape[dim] - 1)], dim=dim)


def _decays(g: torch.Tensor, exclusive: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-decays along the time axis (dim -2) of g (..., L, d_k), each a sum of its own terms.

    Returns (to_query, from_key): to_query[t] = g_1 + ... + g_t (with ``exclusive``,
    g_1 + ... + g_{t-1}), the decay of what was there before step 1 as seen at t;
    from_key[s] = g_{s+1} + ... + g_L, the decay of step s's contribution up to the end.
    """
    to_query = g.cumsum(dim=-2)
    if exclusive:
        to_query = _shift_down(to_query, 0.0)
    from_key = g.flip(-2).cumsum(dim=-2).flip(-2)  # g_s + ... + g_L
    from_key = torch.cat([from_key[..., 1:, :], torch.zeros_like(from_key[..., :1, :])], dim=-2)
    return to_query, from_key


def _sign_prefix(
    sign: torch.Tensor | None, exclusive: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(P_query, P_key) along dim -2: P_t = prod_{j<=t} sign_j (exact in +-1); P_query is P
    shifted one step (P_{t-1}, P_0 = 1) with ``exclusive``. (None, None) without signs."""
    if sign is None:
        return None, None
    prefix = sign.cumprod(dim=-2)
    return (_shift_down(prefix, 1.0) if exclusive else prefix), prefix


def _bonus_view(bonus: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """u (H, d_k) shaped to broadcast against ``like`` (B, H, ..., d_k)."""
    return bonus.reshape(bonus.shape[0], *(1,) * (like.dim() - 3), bonus.shape[1])


# ------------------------------------------------------------------ forms


def gated_linear_attention_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    bonus: torch.Tensor | None = None,
    sign: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loop over time. Returns (o, S_T); see the module docstring for the equations."""
    state = _check(q, k, v, g, initial_state, bonus, sign)
    decay = g.exp() if sign is None else g.exp() * sign
    u = None if bonus is None else bonus[:, :, None]  # (H, d_k, 1)
    outs = []
    for q_t, k_t, v_t, a_t in zip(q.unbind(2), k.unbind(2), v.unbind(2), decay.unbind(2)):
        kv = k_t.unsqueeze(-1) * v_t.unsqueeze(-2)  # k_t^T v_t, (B, H, d_k, d_v)
        if u is None:
            state = torch.addcmul(kv, a_t.unsqueeze(-1), state)
            outs.append((q_t.unsqueeze(-2) @ state).squeeze(-2))
        else:
            outs.append((q_t.unsqueeze(-2) @ (state + u * kv)).squeeze(-2))
            state = torch.addcmul(kv, a_t.unsqueeze(-1), state)
    if not outs:
        return v.new_zeros(v.shape), state
    return torch.stack(outs, dim=2), state


def gated_linear_attention_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    bonus: torch.Tensor | None = None,
    sign: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The quadratic form with the full pairwise decay tensor M (B, H, d_k, T, T).

    scores[t, s] = sum_c q_tc k_sc M_tsc, o = scores V + (Q * decay from the start) S_0;
    S_T = (K * decay to the end)^T V + diag(decay over all T) S_0. Returns (o, S_T).
    """
    state = _check(q, k, v, g, initial_state, bonus, sign)
    if q.shape[2] == 0:
        return v.new_zeros(v.shape), state
    exclusive = bonus is not None
    log_m = segsum(g.transpose(-1, -2))  # (B, H, d_k, T, T): g_{s+1} + ... + g_t, s <= t
    if exclusive:  # g_{s+1} + ... + g_{t-1} for s < t: the row above, strictly lower
        log_m = _shift_down(log_m, float("-inf"))
    pair = log_m.exp()
    p_query, p_key = _sign_prefix(sign, exclusive)
    if sign is not None:  # prod_{j=s+1..t} sign_j = P_t P_s
        rows, cols = p_query.transpose(-1, -2), p_key.transpose(-1, -2)  # (B, H, d_k, T)
        pair = pair * rows.unsqueeze(-1) * cols.unsqueeze(-2)
    scores = torch.einsum("bhtc,bhsc,bhcts->bhts", q, k, pair)
    if exclusive:
        scores = scores + torch.diag_embed(_diagonal_bonus(q, k, bonus))
    to_query, from_key = _decays(g, exclusive)
    q_start, k_end = q * to_query.exp(), k * from_key.exp()
    total = g.sum(dim=2)  # (B, H, d_k)
    end_sign = None if sign is None else p_key[:, :, -1]
    if sign is not None:
        q_start, k_end = q_start * p_query, k_end * p_key * end_sign.unsqueeze(2)
    o = scores @ v + q_start @ state
    whole = total.exp() if sign is None else total.exp() * end_sign
    final = k_end.transpose(-1, -2) @ v + whole.unsqueeze(-1) * state
    return o, final


def _diagonal_bonus(q: torch.Tensor, k: torch.Tensor, bonus: torch.Tensor) -> torch.Tensor:
    """q_t . (u * k_t) per step, (..., L), with u (H, d_k) and q, k (B, H, ..., L, d_k)."""
    return (q * k * _bonus_view(bonus, q)).sum(-1)


def _chunk_decays(
    g: torch.Tensor, exclusive: bool
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every decay factor the chunk form needs, from g (..., C, d_k), C a power of two.

    The chunk is split in aligned blocks of m = 1, 2, 4, ... C/2 steps. For each aligned
    pair (first block, second block) the boundary between them is the reference point: the
    query factor of step t in the second block is exp(g_{r+1} + ... + g_t) (to t-1 with
    ``exclusive``), the key factor of step s in the first block exp(g_{s+1} + ... + g_r),
    r the first block's last step; both exponents are <= 0. Returns

    - levels: for m = 1, 2, ..., C/2 the pair (query factors (..., C/2m, m, d_k) of the
      second blocks, key factors (..., C/2m, m, d_k) of the first blocks);
    - to_query (..., C, d_k): exp(g_1 + ... + g_t) (to t-1 with ``exclusive``), from the
      chunk start; from_key (..., C, d_k): exp(g_{s+1} + ... + g_C), to the chunk end;
      whole (..., d_k): exp(g_1 + ... + g_C).

    The block sums are carried up by doubling (a block of 2m steps is two blocks of m):
    only additions of same-signed terms, never a subtraction, so each exponent has relative
    error ~ C eps however strong the decay, and g = -inf stays exact. No gradient flows
    through here (the chunk form attaches g's gradient separately, see
    :class:`statewise.ops.linear_attention.DecayGrad`).
    """
    *lead, size, d_k = g.shape
    # per block of m steps (m = 1 first): inclusive and exclusive sums from the block start,
    # exclusive reversed sums to the block end (updated in place), and the block totals
    incl, excl, rev, total = g.clone(), torch.zeros_like(g), torch.zeros_like(g), g
    levels = []
    m = 1
    while m < size:
        shape = (*lead, size // (2 * m), 2, m, d_k)
        total = total.reshape(*lead, size // (2 * m), 2, 1, d_k)
        first, second = total[..., 0, :, :], total[..., 1, :, :]
        to_query = (excl if exclusive else incl).view(shape)[..., 1, :, :]
        levels.append((to_query.exp(), rev.view(shape)[..., 0, :, :].exp()))
        # merge the two blocks of m into one of 2m
        incl.view(shape)[..., 1, :, :] += first
        excl.view(shape)[..., 1, :, :] += first
        rev.view(shape)[..., 0, :, :] += second
        total = first + second
        m *= 2
    return levels, (excl if exclusive else incl).exp(), rev.exp(), total.reshape(*lead, d_k).exp()


def _intra_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    levels: list[tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """sum_{s<t} (sum_c q_tc k_sc M_tsc) v_s within each chunk, (..., C, d_v), from q, k
    (..., C, d_k), v (..., C, d_v) and the level factors of :func:`_chunk_decays`.

    At the level of blocks of m steps the (m x m) scores between the second and the first
    block of each aligned pair are one batched GEMM (elementwise for m = 1), applied to
    the first block's values; the parts are added to the second blocks' outputs by
    :class:`_AddToSecondBlocks` (no C x C matrix is assembled).
    """
    *lead, size, d_k = q.shape
    d_v = v.shape[-1]
    parts = []
    for q_factor, k_factor in levels:
        n, m = q_factor.shape[-3], q_factor.shape[-2]
        q_side = q.reshape(*lead, n, 2, m, d_k)[..., 1, :, :] * q_factor
        k_side = k.reshape(*lead, n, 2, m, d_k)[..., 0, :, :] * k_factor
        v_side = v.reshape(*lead, n, 2, m, d_v)[..., 0, :, :]
        if m == 1:  # n tiny GEMMs cost more than the elementwise product
            parts.append((q_side * k_side).sum(-1, keepdim=True) * v_side)
        else:
            parts.append((q_side @ k_side.transpose(-1, -2)) @ v_side)  # (..., n, m, d_v)
    if not parts:
        return v.new_zeros(v.shape)
    return _AddToSecondBlocks.apply(*parts)


class _AddToSecondBlocks(torch.autograd.Function):
    """out (..., C, d_v) = sum over levels of each part (..., C/2m, m, d_v) placed on the
    second block of every aligned pair of m-blocks (levels m = 1, 2, 4, ...); zero elsewhere.
    In place in the forward; the backward hands each part its strided slice of the grad."""

    @staticmethod
    def forward(ctx, *parts):
        *lead, n, m, d_v = parts[0].shape
        size = 2 * n * m
        out = parts[0].new_zeros(*lead, size, d_v)
        for part in parts:
            n, m = part.shape[-3], part.shape[-2]
            out.view(*lead, n, 2, m, d_v)[..., 1, :, :] += part
        ctx.shapes = [p.shape for p in parts]
        return out

    @staticmethod
    def backward(ctx, grad):
        *lead, size, d_v = grad.shape
        return tuple(
            grad.view(*lead, shape[-3], 2, shape[-2], d_v)[..., 1, :, :].contiguous()
            for shape in ctx.shapes
        )


def gated_linear_attention_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    bonus: torch.Tensor | None = None,
    sign: torch.Tensor | None = None,
    chunk_size: int = 64,
    compute_dtype: str | torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise form: chunks of ``chunk_size`` (a power of two) steps, state between them.

    T is padded at the end with q = k = v = 0, g = 0 (and sign = 1), which leaves the
    state unchanged; a sequence shorter than C uses the smallest power of two >= T. For
    chunk n with the decay factors of :func:`_chunk_decays` and the entering state S_{n-1}:

        O_n = A_n V_n + (Q_n * to_query_n) S_{n-1}
        S_n = diag(whole_n) S_{n-1} + (K_n * from_key_n)^T V_n

    A_n = the level-by-level strictly lower scores plus the diagonal (q_t . k_t, or
    q_t . (u * k_t) with the bonus). The GEMMs run in ``compute_dtype`` (see
    :func:`statewise.ops.linear_attention.resolve_compute_dtype`), the state recurrence
    (:func:`statewise.ops.linear_attention.chunk_states`) in q's dtype. Returns (o, S_T).
    """
    state = _check(q, k, v, g, initial_state, bonus, sign)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size}")
    low = resolve_compute_dtype(compute_dtype, q.dtype)
    batch, heads, seq_len, d_k = q.shape
    d_v = v.shape[-1]
    if seq_len == 0:
        return v.new_zeros(v.shape), state
    exclusive = bonus is not None
    diag = _diagonal_bonus(q, k, bonus) if exclusive else None
    track_g = torch.is_grad_enabled() and g.requires_grad
    if track_g:
        g_total = g.sum(dim=2)
        q, k = DecayGrad.apply(q, k, g, exclusive)
    g = g.detach()

    size = min(chunk_size, 1 << (seq_len - 1).bit_length())
    n_chunks = -(-seq_len // size)
    pad = n_chunks * size - seq_len
    if pad:
        q, k, v, g = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v, g))
        if sign is not None:
            sign = F.pad(sign, (0, 0, 0, pad), value=1.0)
    q, k, g = (x.reshape(batch, heads, n_chunks, size, d_k) for x in (q, k, g))
    v = v.reshape(batch, heads, n_chunks, size, d_v)

    with torch.no_grad():
        levels, to_query, from_key, whole = _chunk_decays(g, exclusive)
        if sign is not None:
            p_query, p_key = _sign_prefix(sign.reshape(g.shape), exclusive)
            end_sign = p_key[..., -1, :]  # (B, H, N, d_k)
            to_query = to_query * p_query
            from_key = from_key * p_key * end_sign.unsqueeze(-2)
            whole = whole * end_sign
        if low is not None:
            levels = [(qf.to(low), kf.to(low)) for qf, kf in levels]
            to_query, from_key = to_query.to(low), from_key.to(low)
            if sign is not None:
                p_query, p_key = p_query.to(low), p_key.to(low)
    out_dtype = state.dtype
    if low is not None:
        q, k, v = q.to(low), k.to(low), v.to(low)
    q_in = q if sign is None else q * p_query
    k_in = k if sign is None else k * p_key
    o = _intra_chunk(q_in, k_in, v, levels)  # (B, H, N, C, d_v)
    if not exclusive:  # the diagonal (q_t . k_t) v_t (the signs cancel, P_t^2 = 1)
        o = o + (q * k).sum(-1, keepdim=True) * v

    added = (k * from_key).transpose(-1, -2) @ v  # (B, H, N, d_k, d_v): each chunk's part
    before, state = chunk_states(whole, added, state, low)  # entering states, (B, H, N, ...)
    o = o.to(out_dtype).add_((q * to_query) @ before)
    o = o.reshape(batch, heads, n_chunks * size, d_v)[:, :, :seq_len]
    if exclusive:  # the bonus term (q_t . (u * k_t)) v_t, outside the decayed part
        o = o + diag.unsqueeze(-1) * v.reshape(batch, heads, -1, d_v)[:, :, :seq_len]
    if track_g:
        state = FinalDecayGrad.apply(state, g_total)
    return o, state


@float32_recurrence
def gated_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    bonus: torch.Tensor | None = None,
    sign: torch.Tensor | None = None,
    mode: str = "chunk",
    chunk_size: int = 64,
    compute_dtype: str | torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-key-channel decayed linear attention in ``mode`` "recurrent", "parallel" or "chunk".

    q, k: (B, H, T, d_k); v: (B, H, T, d_v); g: (B, H, T, d_k) log-decays (<= 0, -inf
    allowed); initial_state: (B, H, d_k, d_v) or None (zeros); bonus: None (o_t = q_t S_t)
    or u (H, d_k) (RWKV-6: o_t = q_t (S_{t-1} + diag(u) k_t^T v_t)); sign: None or a +-1
    tensor like g (transition sign * exp(g); treated as a constant). Returns
    (o (B, H, T, d_v), S_T). ``chunk_size`` (a power of two) and ``compute_dtype`` (the
    GEMMs' dtype, e.g. "bfloat16") are used by the chunk form only.
    """
    if mode == "recurrent":
        return gated_linear_attention_recurrent(q, k, v, g, initial_state, bonus, sign)
    if mode == "parallel":
        return gated_linear_attention_parallel(q, k, v, g, initial_state, bonus, sign)
    if mode == "chunk":
        return gated_linear_attention_chunk(
            q, k, v, g, initial_state, bonus, sign, chunk_size, compute_dtype
        )
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
