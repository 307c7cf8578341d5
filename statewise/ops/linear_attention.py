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

Every decay is exp of a sum of log-decays over a segment, computed by :func:`segsum` (a
masked cumulative sum), never as the difference of two cumulative sums: every exponent
is <= 0, nothing overflows, and g = -inf (a hard reset) stays exact.
"""

from __future__ import annotations

import torch

MODES = ("recurrent", "parallel", "chunk")


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise form: quadratic within chunks of ``chunk_size`` steps, state between them.

    T is padded at the end to a multiple of C with q = k = v = 0 and g = 0, which leaves
    the state unchanged. For chunk n (steps nC+1 .. nC+C) with D_n = exp(segsum(g_n)):

        O_n   = (Q_n K_n^T * D_n) V_n + (Q_n * exp(cumsum g_n)) S_{n-1}
        S_n   = exp(sum g_n) S_{n-1} + (K_n * D_n[C-1, :])^T V_n

    All products are batched GEMMs over (B, H, chunks); the chunk-to-chunk recurrence is
    a loop of T / C steps. Returns (o, S_T).
    """
    state = _check(q, k, v, g, initial_state)
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
        q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g = torch.nn.functional.pad(g, (0, pad))
    q = q.reshape(batch, heads, n_chunks, size, d_k)
    k = k.reshape(batch, heads, n_chunks, size, d_k)
    v = v.reshape(batch, heads, n_chunks, size, d_v)
    g = g.reshape(batch, heads, n_chunks, size)

    decay = segsum(g).exp()  # (B, H, N, C, C)
    o = ((q @ k.transpose(-1, -2)) * decay) @ v  # within-chunk part
    from_start = g.cumsum(dim=-1).exp()  # (B, H, N, C): decay from the chunk start to t
    to_end = decay[..., -1, :]  # (B, H, N, C): decay from s to the chunk end
    chunk_decay = from_start[..., -1]  # (B, H, N): decay across the whole chunk
    # what each chunk adds to the state, (B, H, N, d_k, d_v), one batched GEMM
    added = (k * to_end.unsqueeze(-1)).transpose(-1, -2) @ v
    # the states entering each chunk: S_{n} = chunk_decay_n S_{n-1} + added_n
    # (unbind, not [:, :, n]: one stack in the backward instead of N full-size scatters)
    entering = []
    for a_n, added_n in zip(chunk_decay.unbind(2), added.unbind(2)):
        entering.append(state)
        state = torch.addcmul(added_n, a_n[..., None, None], state)
    before = torch.stack(entering, dim=2)  # (B, H, N, d_k, d_v)
    o = o + (q * from_start.unsqueeze(-1)) @ before
    o = o.reshape(batch, heads, n_chunks * size, d_v)[:, :, :seq_len]
    return o, state


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    mode: str = "chunk",
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scalar-decay linear attention in ``mode`` "recurrent", "parallel" or "chunk".

    q, k: (B, H, T, d_k); v: (B, H, T, d_v); g: (B, H, T) log-decays (<= 0);
    initial_state: (B, H, d_k, d_v) or None (zeros). Returns (o (B, H, T, d_v), S_T).
    ``chunk_size`` is used by the chunk form only.
    """
    if mode == "recurrent":
        return linear_attention_recurrent(q, k, v, g, initial_state)
    if mode == "parallel":
        return linear_attention_parallel(q, k, v, g, initial_state)
    if mode == "chunk":
        return linear_attention_chunk(q, k, v, g, initial_state, chunk_size)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
