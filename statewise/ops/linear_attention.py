"""Multi-head linear attention with a scalar decay per head and per time step.

    S_t = exp(g_t) * S_{t-1} + k_t^T v_t        (S: d_k x d_v per head)
    o_t = q_t S_t

with q, k: (B, H, T, d_k), v: (B, H, T, d_v), g: (B, H, T) log-decays (<= 0), initial
state S_0: (B, H, d_k, d_v). This is the form shared by RetNet (g = log gamma_h, constant),
Mamba-2/SSD (g = dt * A), GateLoop with a scalar gate and GLA with a scalar gate.
Unrolled, with D[t, s] = exp(g_{s+1} + ... + g_t) for s <= t and 0 for s > t,

    o_t = sum_{s <= t} D[t, s] (q_t . k_s) v_s + exp(g_1 + ... + g_t) q_t S_0.

Three equal forms, each returning (o, S_T):

- :func:`linear_attention_recurrent`: the loop over time; O(T d_k d_v) and T Python steps.
- :func:`linear_attention_parallel`: the quadratic form (Q K^T * D) V + (Q S_0) * decay;
  O(T^2 (d_k + d_v)) as dense GEMMs.
- :func:`linear_attention_chunk`: chunkwise; the quadratic form inside chunks of C
  steps, and the state passed between chunks: O(T C (d_k + d_v) + T d_k d_v), all GEMMs
  plus T / C steps of a loop.

The chunk form's four GEMMs can run in bfloat16 (``compute_dtype="bfloat16"``, see
:func:`resolve_compute_dtype`) while the state and the chunk-to-chunk recurrence
(:func:`chunk_states`, shared with the gated and mLSTM chunk forms) stay float32.

Every decay is exp of a sum of log-decays over a segment, computed by :func:`segsum` (a
masked cumulative sum), never as the difference of two cumulative sums: every exponent
is <= 0, nothing overflows, and g = -inf (a hard reset) stays exact.
"""

from __future__ import annotations

import torch

from statewise.ops.precision import float32_recurrence

MODES = ("recurrent", "parallel", "chunk")
COMPUTE_DTYPES = ("float32", "bfloat16")


def segsum(g: torch.Tensor) -> torch.Tensor:
    """Segment sums of ``g`` (..., T): out[..., t, s] = g_{s+1} + ... + g_t for s <= t, else -inf.

    Computed as a cumulative sum over t of g masked to the strictly lower triangle, so
    each entry is a sum of the log-decays in its own segment (no cancellation between two
    long prefix sums, no inf - inf); the diagonal is 0 and exp(out) is the decay matrix D.
    """
    seq_len = g.shape[-1]
    ones = torch.ones(seq_len, seq_len, dtype=torch.bool, device=g.device)
    # x[..., t, s] = g_t where s < t, else 0; its cumsum over t is g_{s+1} + ... + g_t
    x = g.unsqueeze(-1).expand(*g.shape, seq_len).masked_fill(~ones.tril(-1), 0.0)
    return x.cumsum(dim=-2).masked_fill(~ones.tril(0), float("-inf"))


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """ValueError unless q, k are (B, H, T, d_k) and v is (B, H, T, d_v)."""
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(
            f"q and k must both be (B, H, T, d_k), got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"v must be (B, H, T, d_v) matching q {tuple(q.shape)}, got {tuple(v.shape)}"
        )


def matrix_state(
    q: torch.Tensor, v: torch.Tensor, initial_state: torch.Tensor | None
) -> torch.Tensor:
    """``initial_state`` checked to be (B, H, d_k, d_v), or zeros of that shape if None."""
    batch, heads, _, d_k = q.shape
    state_shape = (batch, heads, d_k, v.shape[-1])
    if initial_state is None:
        return q.new_zeros(state_shape, dtype=torch.promote_types(q.dtype, v.dtype))
    if initial_state.shape != state_shape:
        raise ValueError(
            f"initial_state must be (B, H, d_k, d_v) = {state_shape}, "
            f"got {tuple(initial_state.shape)}"
        )
    return initial_state


def _check(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> torch.Tensor:
    check_qkv(q, k, v)
    if g.shape != q.shape[:3]:
        raise ValueError(f"g must be (B, H, T) = {tuple(q.shape[:3])}, got {tuple(g.shape)}")
    return matrix_state(q, v, initial_state)


def check_compute_dtype(compute_dtype: object) -> str:
    """``compute_dtype`` if it is one of :data:`COMPUTE_DTYPES`, else ValueError."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
    return compute_dtype


def resolve_compute_dtype(
    compute_dtype: str | torch.dtype | None, dtype: torch.dtype
) -> torch.dtype | None:
    """The GEMM dtype of the chunk forms, or None to compute in ``dtype`` itself.

    "float32" / None: no cast. "bfloat16": q, k, v, the decay masks and the states are cast
    to bfloat16 as GEMM inputs (oneDNN runs those on AVX512-BF16 / AMX units, accumulating
    in float32); products come out in bfloat16, are added to the float32 state and output
    in ``dtype``. Float64 inputs are never lowered (the references run in float64).
    """
    if compute_dtype is None or dtype == torch.float64:
        return None
    by_name = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    low = by_name.get(compute_dtype) if isinstance(compute_dtype, str) else compute_dtype
    if low not in (torch.float32, torch.bfloat16):
        raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {compute_dtype!r}")
    return None if low == dtype or low == torch.float32 else low


class ChunkStates(torch.autograd.Function):
    """The chunk-to-chunk recurrence S_n = a_n S_{n-1} + A_n, n = 1 .. N, as one op.

    Forward: a loop over the chunks in S_0's dtype, writing each entering state S_{n-1}
    into one preallocated (B, H, N, d_k, d_v) tensor of dtype ``low`` (the GEMM input
    dtype; no stack, no autograd graph of N small ops). Backward, with G_n = dL/dS_n
    carried from the last chunk down (G_N = dL/dS_N from the final state): dL/dA_n = G_n,
    dL/da_n = sum G_n * S_{n-1}, G_{n-1} = a_n G_n + dL/d(entering S_{n-1}).
    """

    @staticmethod
    def forward(ctx, decay, added, state, low):
        a = decay.reshape(*decay.shape, *(1,) * (added.dim() - decay.dim()))
        before = added.new_empty(added.shape, dtype=low or state.dtype)
        for n in range(added.shape[2]):
            before[:, :, n] = state
            state = torch.addcmul(added[:, :, n], a[:, :, n], state)  # in S_0's dtype
        ctx.save_for_backward(decay, before)
        ctx.added_dtype = added.dtype
        return before, state

    @staticmethod
    def backward(ctx, grad_before, grad_state):
        decay, before = ctx.saved_tensors
        a = decay.reshape(*decay.shape, *(1,) * (before.dim() - decay.dim()))
        reduce = tuple(range(decay.dim() - 1, before.dim() - 1))  # the state dims a spans
        carried = grad_state
        if carried is None:
            carried = before.new_zeros(before[:, :, 0].shape, dtype=decay.dtype)
        grad_added = before.new_empty(before.shape, dtype=ctx.added_dtype)
        grad_decay = torch.zeros_like(decay) if ctx.needs_input_grad[0] else None
        for n in reversed(range(before.shape[2])):
            grad_added[:, :, n] = carried
            if grad_decay is not None:
                grad_decay[:, :, n] = (carried * before[:, :, n]).sum(reduce)
            carried = a[:, :, n] * carried
            if grad_before is not None:
                carried = carried + grad_before[:, :, n]
        return grad_decay, grad_added, carried, None


def chunk_states(
    decay: torch.Tensor,
    added: torch.Tensor,
    state: torch.Tensor,
    low: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """States entering each chunk and the final state of S_n = a_n S_{n-1} + A_n.

    decay a: (B, H, N) or (B, H, N, d_k) (scalar or per key channel); added A:
    (B, H, N, d_k, d_v), any float dtype; state S_0: (B, H, d_k, d_v), the dtype the
    recurrence runs in. Returns (S_0 .. S_{N-1} stacked on dim 2, in ``low`` if given,
    else S_0's dtype; S_N in S_0's dtype).
    """
    return ChunkStates.apply(decay, added, state, low)


class DecayGrad(torch.autograd.Function):
    """Identity on (q, k) in the forward; in the backward also returns the gradient of g.

    With b_t = g_1 + ... + g_t (per head, or per key channel) a decayed linear attention is
    a function of Q~_t = q_t exp(b_t) (exp(b_{t-1}) with an ``exclusive`` bonus form),
    K~_s = k_s exp(-b_s), v, S_0, and of b_T through S_T = exp(b_T) (sum_s K~_s^T v_s + S_0);
    so, holding q and k fixed, dL/db_t = q_t . dL/dq_t (moved to t-1 when exclusive) -
    k_t . dL/dk_t (summed over the key channels for a scalar g), plus the S_T term
    (:class:`FinalDecayGrad`), and dL/dg_j = sum_{t >= j} dL/db_t. The chunk forms thus run
    with g detached (no autograd graph through their decay masks) and get g's exact
    gradient from dq and dk, computed by autograd through the stable forward. Signs
    (+-1 factors folded into q and k) do not change this.
    """

    @staticmethod
    def forward(ctx, q, k, g, exclusive):
        ctx.save_for_backward(q, k)
        ctx.exclusive = exclusive
        ctx.scalar = g.dim() < q.dim()
        return q.view_as(q), k.view_as(k)

    @staticmethod
    def backward(ctx, grad_q, grad_k):
        q, k = ctx.saved_tensors
        from_q = q * grad_q
        if ctx.exclusive:  # q_{t+1} saw b_t
            from_q = torch.cat([from_q[:, :, 1:], torch.zeros_like(from_q[:, :, :1])], dim=2)
        grad_b = from_q - k * grad_k
        if ctx.scalar:
            grad_b = grad_b.sum(-1)
        grad_g = grad_b.flip(2).cumsum(2).flip(2)
        return grad_q, grad_k, grad_g, None


class FinalDecayGrad(torch.autograd.Function):
    """Identity on S_T; the backward adds dL/db_T = sum dL/dS_T * S_T (over d_v, and d_k
    for a scalar decay) to b_T = sum_t g_t."""

    @staticmethod
    def forward(ctx, state, g_total):
        ctx.save_for_backward(state)
        ctx.dims = tuple(range(g_total.dim(), state.dim()))
        return state.view_as(state)

    @staticmethod
    def backward(ctx, grad_state):
        (state,) = ctx.saved_tensors
        return grad_state, (grad_state * state).sum(ctx.dims)


def linear_attention_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loop over time: S_t = exp(g_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t. Returns (o, S_T)."""
    state = _check(q, k, v, g, initial_state)
    decay = g.exp()
    outs = []
    for q_t, k_t, v_t, a_t in zip(q.unbind(2), k.unbind(2), v.unbind(2), decay.unbind(2)):
        # (B, H, d_k, 1) x (B, H, 1, d_v): the outer product k_t^T v_t
        state = a_t[..., None, None] * state + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        outs.append((q_t.unsqueeze(-2) @ state).squeeze(-2))
    if not outs:
        return v.new_zeros(v.shape), state
    return torch.stack(outs, dim=2), state


def linear_attention_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The quadratic form o = (Q K^T * D) V + (Q S_0) * exp(cumsum g). Returns (o, S_T).

    D = exp(segsum(g)) (T x T per head, lower triangular); the final state is
    S_T = (K * D[T-1, :])^T V + exp(sum g) S_0, read off D's last row.
    """
    state = _check(q, k, v, g, initial_state)
    if q.shape[2] == 0:
        return v.new_zeros(v.shape), state
    decay = segsum(g).exp()  # (B, H, T, T)
    scores = (q @ k.transpose(-1, -2)) * decay
    from_start = g.cumsum(dim=-1).exp()  # exp(g_1 + ... + g_t), decay of S_0 up to t
    o = scores @ v + (q @ state) * from_start.unsqueeze(-1)
    to_end = decay[..., -1, :]  # exp(g_{s+1} + ... + g_T)
    final = (k * to_end.unsqueeze(-1)).transpose(-1, -2) @ v + from_start[
        ..., -1, None, None
    ] * state
    return o, final


def linear_attention_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
    compute_dtype: str | torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise form: quadratic within chunks of ``chunk_size`` steps, state between them.

    T is padded at the end to a multiple of C with q = k = v = 0 and g = 0, which leaves
    the state unchanged. For chunk n (steps nC+1 .. nC+C) with D_n = exp(segsum(g_n)):

        O_n   = (Q_n K_n^T * D_n) V_n + (Q_n * exp(cumsum g_n)) S_{n-1}
        S_n   = exp(sum g_n) S_{n-1} + (K_n * D_n[C-1, :])^T V_n

    The four products are batched GEMMs over (B, H, chunks), run in ``compute_dtype``
    (see :func:`resolve_compute_dtype`; the state S and its sums across chunks stay in q's
    dtype); the
    chunk-to-chunk recurrence is :func:`chunk_states`. The decays carry no autograd graph:
    g's gradient comes from dq and dk (:class:`DecayGrad`). Returns (o, S_T).
    """
    state = _check(q, k, v, g, initial_state)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    low = resolve_compute_dtype(compute_dtype, q.dtype)
    batch, heads, seq_len, d_k = q.shape
    d_v = v.shape[-1]
    if seq_len == 0:
        return v.new_zeros(v.shape), state
    track_g = torch.is_grad_enabled() and g.requires_grad
    if track_g:
        g_total = g.sum(dim=-1)
        q, k = DecayGrad.apply(q, k, g, False)
    g = g.detach()
    size = min(chunk_size, seq_len)
    n_chunks = -(-seq_len // size)
    pad = n_chunks * size - seq_len
    if pad:
        q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g = torch.nn.functional.pad(g, (0, pad))
    q = q.reshape(batch, heads, n_chunks, size, d_k)
    k = k.reshape(batch, heads, n_chunks, size, d_k)
    v = v.reshape(batch, heads, n_chunks, size, d_v)
    g = g.reshape(batch, heads, n_chunks, size)

    with torch.no_grad():
        decay = segsum(g).exp_()  # (B, H, N, C, C)
        from_start = g.cumsum(dim=-1).exp_()  # (B, H, N, C): from the chunk start to t
        to_end = decay[..., -1, :].unsqueeze(-1)  # (B, H, N, C, 1): from s to the chunk end
        chunk_decay = from_start[..., -1]  # (B, H, N): across the whole chunk
        from_start, to_end = (x if low is None else x.to(low) for x in (from_start, to_end))
    q, k, v = (x if low is None else x.to(low) for x in (q, k, v))
    # within-chunk part; the mask is applied in place to the fresh scores (one pass)
    o = (q @ k.transpose(-1, -2)).mul_(decay) @ v
    # what each chunk adds to the state, (B, H, N, d_k, d_v), one batched GEMM
    added = (k * to_end).transpose(-1, -2) @ v
    before, state = chunk_states(chunk_decay, added, state, low)
    o = o.to(state.dtype).add_((q * from_start.unsqueeze(-1)) @ before)
    o = o.reshape(batch, heads, n_chunks * size, d_v)[:, :, :seq_len]
    if track_g:
        state = FinalDecayGrad.apply(state, g_total)
    return o, state


@float32_recurrence
def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    mode: str = "chunk",
    chunk_size: int = 64,
    compute_dtype: str | torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scalar-decay linear attention in ``mode`` "recurrent", "parallel" or "chunk".

    q, k: (B, H, T, d_k); v: (B, H, T, d_v); g: (B, H, T) log-decays (<= 0);
    initial_state: (B, H, d_k, d_v) or None (zeros). Returns (o (B, H, T, d_v), S_T).
    ``chunk_size`` and ``compute_dtype`` (the GEMMs' dtype, e.g. "bfloat16") are used by
    the chunk form only.
    """
    if mode == "recurrent":
        return linear_attention_recurrent(q, k, v, g, initial_state)
    if mode == "parallel":
        return linear_attention_parallel(q, k, v, g, initial_state)
    if mode == "chunk":
        return linear_attention_chunk(q, k, v, g, initial_state, chunk_size, compute_dtype)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
