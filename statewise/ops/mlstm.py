"""The mLSTM cell (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory"), stabilised.

Per head, with q_t, k_t (d_k), v_t (d_v), the input gate i_t = exp(log_i_t) (exponential,
unbounded) and the forget gate f_t = s_t exp(log_f_t) (s_t = +1, or -1 for a negative
eigenvalue):

    C_t = f_t C_{t-1} + i_t k_t^T v_t          (d_k x d_v; the paper writes v k^T, d_v x d_k)
    n_t = f_t n_{t-1} + i_t k_t                (d_k)
    h_t = q_t C_t / max(|q_t . n_t|, 1)        (d_v)

The paper's key scale 1/sqrt(d_k) belongs to k_t = W_k x_t / sqrt(d_k) and is applied by
the caller (statewise.layers.mlstm), as in the xlstm package's mLSTM cell; mlstm_kernels and
xLSTM-7B scale q instead, which gives the same h but a state sqrt(d_k) times ours.

Exponential input gates overflow, so the state is kept stabilised: (C, n, m) stands for
the true state (e^m C, e^m n), and

    m_t = max(log|f_t| + m_{t-1}, log i_t)
    C_t = s_t exp(log|f_t| + m_{t-1} - m_t) C_{t-1} + exp(log i_t - m_t) k_t^T v_t
    n_t = s_t exp(log|f_t| + m_{t-1} - m_t) n_{t-1} + exp(log i_t - m_t) k_t
    h_t = q_t C_t / max(|q_t . n_t|, exp(-m_t))

Every exponent is <= 0 and the denominator is the paper's max(|q n|, 1) in the true scale,
so h_t does not depend on m at all: m only keeps the numbers in range. Unlike the xlstm
package this adds no eps to the denominator: exp(-m_t) > 0 already keeps it away from
zero, and an eps would make h depend on the stabiliser (by a relative eps e^{m_t}).

Unrolled, with F[t, s] = log|f_{s+1}| + ... + log|f_t| and S[t, s] = s_{s+1} ... s_t,

    m_t = max(F[t, 0] + m_0, max_{s<=t} F[t, s] + log i_s)
    num_t = sum_s S[t,s] e^{F[t,s] + log i_s - m_t} (q_t . k_s) v_s
            + S[t,0] e^{F[t,0] + m_0 - m_t} q_t C_0
    h_t = num_t / max(|num_t with 1 for v_s and n_0 for C_0|, e^{-m_t})

which is the paper's stabilised parallel form (its appendix) extended by an initial state.
m_t there is the row maximum of the log decay matrix, taken together with the initial
state's term, so it equals the recurrent m_t and all three forms return the same final
(C, n, m).

Three equal forms, each returning (h, (C_T, n_T, m_T)):

- :func:`mlstm_recurrent`: the stabilised loop over time (:func:`mlstm_step` per token).
- :func:`mlstm_parallel`: the O(T^2) form above, dense GEMMs.
- :func:`mlstm_chunk`: the parallel form inside chunks of C steps, the stabilised state
  (C, n, m) passed between chunks; O(T C (d_k + d_v) + T d_k d_v).

n rides along C as one extra value column (v_t extended by a 1), so every numerator and
its denominator come out of the same GEMM. Log decays over a segment come from
:func:`statewise.ops.linear_attention.segsum` (a masked cumulative sum, no cancellation).
A step with log_i = -inf, log_f = 0 and sign +1 leaves the state exactly unchanged (the
layers use it for padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from statewise.ops.linear_attention import (
    check_qkv,
    chunk_states,
    resolve_compute_dtype,
    segsum,
)
from statewise.ops.precision import float32_recurrence

MODES = ("recurrent", "parallel", "chunk")

MLSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # C, n, m


def zero_state(batch: int, heads: int, d_k: int, d_v: int, device=None, dtype=None) -> MLSTMState:
    """The empty state: C = 0 (B, H, d_k, d_v), n = 0 (B, H, d_k), m = 0 (B, H)."""
    return (
        torch.zeros(batch, heads, d_k, d_v, device=device, dtype=dtype),
        torch.zeros(batch, heads, d_k, device=device, dtype=dtype),
        torch.zeros(batch, heads, device=device, dtype=dtype),
    )


def _check(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_i: torch.Tensor,
    log_f: torch.Tensor,
    f_sign: torch.Tensor | None,
    state: MLSTMState | None,
) -> MLSTMState:
    check_qkv(q, k, v)
    for name, t in (("log_i", log_i), ("log_f", log_f), ("f_sign", f_sign)):
        if t is not None and t.shape != q.shape[:3]:
            raise ValueError(
                f"{name} must be (B, H, T) = {tuple(q.shape[:3])}, got {tuple(t.shape)}"
            )
    batch, heads, _, d_k = q.shape
    d_v = v.shape[-1]
    if state is None:
        return zero_state(batch, heads, d_k, d_v, q.device, q.dtype)
    c, n, m = state
    want = ((batch, heads, d_k, d_v), (batch, heads, d_k), (batch, heads))
    if (tuple(c.shape), tuple(n.shape), tuple(m.shape)) != want:
        raise ValueError(
            f"state must be (C, n, m) of shapes {want}, "
            f"got {(tuple(c.shape), tuple(n.shape), tuple(m.shape))}"
        )
    return c, n, m


def _readout(out: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """h = numerator / max(|denominator|, exp(-m)); ``out`` holds [q C, q . n] in its last dim."""
    num, den = out[..., :-1], out[..., -1]
    return num / torch.maximum(den.abs(), torch.exp(-m)).unsqueeze(-1)


# ----------------------------------------------------------------- recurrent


@float32_recurrence
def mlstm_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_i: torch.Tensor,
    log_f: torch.Tensor,
    state: MLSTMState,
    f_sign: torch.Tensor | None = None,
) -> tuple[torch.Tensor, MLSTMState]:
    """One stabilised step. q, k: (B, H, d_k); v: (B, H, d_v); log_i, log_f, f_sign: (B, H).

    Returns (h (B, H, d_v), (C, n, m)).
    """
    c, n, m = state
    m_new = torch.maximum(log_f + m, log_i)
    f_act = torch.exp(log_f + m - m_new)
    if f_sign is not None:
        f_act = f_act * f_sign
    i_act = torch.exp(log_i - m_new)
    ik = (i_act.unsqueeze(-1) * k).unsqueeze(-1)  # (B, H, d_k, 1)
    c = torch.addcmul(f_act[..., None, None] * c, ik, v.unsqueeze(-2))
    n = torch.addcmul(f_act.unsqueeze(-1) * n, i_act.unsqueeze(-1), k)
    num = (q.unsqueeze(-2) @ c).squeeze(-2)
    den = (q * n).sum(-1)
    h = num / torch.maximum(den.abs(), torch.exp(-m_new)).unsqueeze(-1)
    return h, (c, n, m_new)


def mlstm_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_i: torch.Tensor,
    log_f: torch.Tensor,
    initial_state: MLSTMState | None = None,
    f_sign: torch.Tensor | None = None,
) -> tuple[torch.Tensor, MLSTMState]:
    """The stabilised loop over time. Shapes as in :func:`mlstm`. Returns (h, (C, n, m))."""
    state = _check(q, k, v, log_i, log_f, f_sign, initial_state)
    signs = [None] * q.shape[2] if f_sign is None else f_sign.unbind(2)
    hs = []
    for q_t, k_t, v_t, i_t, f_t, s_t in zip(
        q.unbind(2), k.unbind(2), v.unbind(2), log_i.unbind(2), log_f.unbind(2), signs
    ):
        h, state = mlstm_step(q_t, k_t, v_t, i_t, f_t, state, s_t)
        hs.append(h)
    if not hs:
        return v.new_zeros(v.shape), state
    return torch.stack(hs, dim=2), state


# --------------------------------------------------------- parallel and chunk


def _augment(
    v: torch.Tensor, c: torch.Tensor, n: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """v with a column of ones, C with n as its last column: [C | n] tracks both at once."""
    return F.pad(v, (0, 1), value=1.0), torch.cat((c, n.unsqueeze(-1)), dim=-1)


def _log_decays(log_i: torch.Tensor, log_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For segments along the last dim (L): b_t = log f_1 + .. + log f_t (L) and the log gate
    matrix log_d[t, s] = log f_{s+1} + .. + log f_t + log i_s for s <= t, -inf above (L, L)."""
    return log_f.cumsum(dim=-1), segsum(log_f) + log_i.unsqueeze(-2)


def _stabilised_gates(
    b: torch.Tensor,
    log_d: torch.Tensor,
    m_enter: torch.Tensor,
    f_sign: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per step m_t (L), the gate matrix exp(log_d - m_t) (L, L) and the decay of the entering
    state exp(b_t + m_enter - m_t) (L), with signs when ``f_sign`` is given."""
    m = torch.maximum(b + m_enter.unsqueeze(-1), log_d.amax(dim=-1))
    gates = torch.exp(log_d - m.unsqueeze(-1))
    from_start = torch.exp(b + m_enter.unsqueeze(-1) - m)
    if f_sign is not None:
        p = f_sign.cumprod(dim=-1)  # s_1 ... s_t; S[t, s] = p_t p_s since p_s^2 = 1
        gates = gates * (p.unsqueeze(-1) * p.unsqueeze(-2))
        from_start = from_start * p
    return m, gates, from_start


def _chunk_added(k: torch.Tensor, va: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """What a segment adds to [C | n] by its end: (k * last row of the gate matrix)^T [v | 1]."""
    return (k * gates[..., -1, :].unsqueeze(-1)).transpose(-1, -2) @ va


def mlstm_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_i: torch.Tensor,
    log_f: torch.Tensor,
    initial_state: MLSTMState | None = None,
    f_sign: torch.Tensor | None = None,
) -> tuple[torch.Tensor, MLSTMState]:
    """The stabilised O(T^2) form (T x T gate matrix per head). Returns (h, (C, n, m))."""
    c0, n0, m0 = _check(q, k, v, log_i, log_f, f_sign, initial_state)
    if q.shape[2] == 0:
        return v.new_zeros(v.shape), (c0, n0, m0)
    va, ca = _augment(v, c0, n0)
    b, log_d = _log_decays(log_i, log_f)
    m, gates, from_start = _stabilised_gates(b, log_d, m0, f_sign)
    out = ((q @ k.transpose(-1, -2)) * gates) @ va + (q * from_start.unsqueeze(-1)) @ ca
    final = from_start[..., -1, None, None] * ca + _chunk_added(k, va, gates)
    return _readout(out, m), (final[..., :-1], final[..., -1], m[..., -1])


def mlstm_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_i: torch.Tensor,
    log_f: torch.Tensor,
    initial_state: MLSTMState | None = None,
    f_sign: torch.Tensor | None = None,
    chunk_size: int = 64,
    compute_dtype: str | torch.dtype | None = None,
) -> tuple[torch.Tensor, MLSTMState]:
    """Chunkwise: the parallel form inside chunks, the stabilised state between them.

    T is padded at the end to a multiple of C with q = k = v = 0, log_i = -inf, log_f = 0,
    which leaves the state unchanged. With b, log_d per chunk and G_n = b_C (the chunk's
    total log forget), the stabiliser entering chunk n+1 is m_n = max(G_n + m_{n-1},
    max_s log_d_n[C, s]) (a loop over chunks on (B, H) numbers); given those, each chunk's
    outputs and what it adds to the state are batched GEMMs, and the state itself follows
    [C|n]_n = s exp(G_n + m_{n-1} - m_n) [C|n]_{n-1} + added_n
    (:func:`statewise.ops.linear_attention.chunk_states`). The GEMMs run in
    ``compute_dtype`` (see :func:`statewise.ops.linear_attention.resolve_compute_dtype`);
    the gates, the stabiliser, the state and the readout stay in q's dtype.
    Returns (h, (C, n, m)).
    """
    c0, n0, m = _check(q, k, v, log_i, log_f, f_sign, initial_state)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    low = resolve_compute_dtype(compute_dtype, q.dtype)
    batch, heads, seq_len, d_k = q.shape
    d_v = v.shape[-1]
    if seq_len == 0:
        return v.new_zeros(v.shape), (c0, n0, m)
    size = min(chunk_size, seq_len)
    n_chunks = -(-seq_len // size)
    pad = n_chunks * size - seq_len
    va, state = _augment(v, c0, n0)
    if pad:
        q, k, va = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, va))
        log_i = F.pad(log_i, (0, pad), value=float("-inf"))
        log_f = F.pad(log_f, (0, pad))
        if f_sign is not None:
            f_sign = F.pad(f_sign, (0, pad), value=1.0)

    def chunks(t: torch.Tensor) -> torch.Tensor:  # (B, H, N*C, ...) -> (B, H, N, C, ...)
        return t.reshape(batch, heads, n_chunks, size, *t.shape[3:])

    q, k, va, log_i, log_f = map(chunks, (q, k, va, log_i, log_f))
    f_sign = None if f_sign is None else chunks(f_sign)

    b, log_d = _log_decays(log_i, log_f)  # (B, H, N, C), (B, H, N, C, C)
    # the stabiliser entering each chunk: the recurrence of m, one chunk at a time
    local_max = log_d[..., -1, :].amax(dim=-1)  # (B, H, N)
    entering_m = []
    for total_n, local_n in zip(b[..., -1].unbind(2), local_max.unbind(2)):
        entering_m.append(m)
        m = torch.maximum(total_n + m, local_n)
    m_enter = torch.stack(entering_m, dim=2)  # (B, H, N)

    m_steps, gates, from_start = _stabilised_gates(b, log_d, m_enter, f_sign)
    decay = from_start[..., -1]  # (B, H, N): the entering state's decay across the chunk
    if low is not None:
        q, k, va, gates, from_start = (t.to(low) for t in (q, k, va, gates, from_start))
    added = _chunk_added(k, va, gates)  # (B, H, N, d_k, d_v + 1)
    before, state = chunk_states(decay, added, state, low)  # entering states
    inner = ((q @ k.transpose(-1, -2)) * gates) @ va
    out = inner.to(state.dtype) + (q * from_start.unsqueeze(-1)) @ before
    h = _readout(out, m_steps).reshape(batch, heads, n_chunks * size, d_v)[:, :, :seq_len]
    return h, (state[..., :-1], state[..., -1], m)


@float32_recurrence
def mlstm(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_i: torch.Tensor,
    log_f: torch.Tensor,
    initial_state: MLSTMState | None = None,
    f_sign: torch.Tensor | None = None,
    mode: str = "chunk",
    chunk_size: int = 64,
    compute_dtype: str | torch.dtype | None = None,
) -> tuple[torch.Tensor, MLSTMState]:
    """The stabilised mLSTM cell in ``mode`` "recurrent", "parallel" or "chunk".

    q, k: (B, H, T, d_k) (k already scaled by 1/sqrt(d_k)); v: (B, H, T, d_v);
    log_i: (B, H, T) input gate pre-activations (i = exp(log_i)); log_f: (B, H, T) log of
    the forget gate's magnitude (e.g. logsigmoid of its pre-activation); f_sign: (B, H, T)
    of +-1, the forget gate's sign, or None for all +1; initial_state: (C (B, H, d_k, d_v),
    n (B, H, d_k), m (B, H)) or None for zeros. Returns (h (B, H, T, d_v), (C, n, m)).
    ``chunk_size`` and ``compute_dtype`` (the GEMMs' dtype, e.g. "bfloat16") are used by
    the chunk form only.
    """
    if mode == "recurrent":
        return mlstm_recurrent(q, k, v, log_i, log_f, initial_state, f_sign)
    if mode == "parallel":
        return mlstm_parallel(q, k, v, log_i, log_f, initial_state, f_sign)
    if mode == "chunk":
        return mlstm_chunk(q, k, v, log_i, log_f, initial_state, f_sign, chunk_size, compute_dtype)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
