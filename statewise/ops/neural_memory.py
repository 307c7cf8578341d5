"""Titans' neural memory (Behrouz et al. 2025): an MLP trained at test time, in two equal forms.

Per head, the memory M is an MLP of depth 1, M(x) = W x, or depth 2, M(x) = W_2 silu(W_1 x).
Per token, with keys k_t, values v_t, queries q_t and per-head rates in (0, 1): the learning
rate theta_t, the momentum eta_t and the forgetting alpha_t,

    l(M; k, v) = |M(k) - v|^2                               the associative loss
    S_t = eta_t S_{t-1} - theta_t grad l(M_c; k_t, v_t)      surprise with momentum
    M_t = (1 - alpha_t) M_{t-1} + S_t                        forgetting, then the update
    o_t = M_t(q_t)                                           read after the update

where M_c are the weights at the start of the token's chunk: tokens are grouped into chunks
of C real tokens counted from the start of the stream (``pos``, real tokens seen, as in
mini-batch gradient descent), and every token of a chunk takes its gradient at the weights
the chunk started with. C = 1 is plain sequential gradient descent (M_c = M_{t-1}); C is
part of the function, not an implementation choice.

The gradients are written out (backprop by hand) and every one is an outer product, a sum
over the memory's layers of (left_t) (right_t)^T:

    depth 1: r = W k - v;  grad W = (2 r) k^T
    depth 2: a = W_1 k, z = silu(a), r = W_2 z - v
             grad W_2 = (2 r) z^T
             grad W_1 = delta k^T,  delta = (W_2^T 2 r) * silu'(a),
             silu'(a) = s (1 + a (1 - s)), s = sigmoid(a)

Forms, each returning (o (B, H, T, d_v), (memory, start, momentum, pos)):

- ``"recurrent"``: the loop over tokens. The state keeps the current weights M, the weights
  of the current chunk's start, the momentum S and the position; a token at a position
  that is a multiple of C first sets start := M.
- ``"chunk"``: per chunk, all gradients at the chunk's start weights M_c (batched GEMMs),
  then the two scalar linear recurrences are unrolled. With, inside the chunk,
  Ge_t = eta_1 ... eta_t, De[t, s] = eta_{s+1} ... eta_t, Gk_t and Dk[t, s] the same for
  1 - alpha, and u_s = -theta_s grad_s (an outer product L_s R_s^T):

      S_t = Ge_t S_0 + sum_{s<=t} De[t, s] u_s
      M_t = Gk_t M_0 + c_t S_0 + sum_{s<=t} A[t, s] u_s,   A = Dk De, c = Dk Ge

  so a weight matrix applied to token t's input h_t is
  Gk_t (M_0 h_t) + c_t (S_0 h_t) + sum_s A[t, s] (R_s . h_t) L_s: attention-like matrix
  products, no per-token weights materialised. Chunks follow each row's own count of real
  tokens (``pos`` and ``mask`` differ per row): the real tokens of every row are laid out
  so that chunk boundaries fall on multiples of C (a row starting in the middle of a chunk
  is shifted right by pos mod C), the free slots being identity steps (theta = 0,
  eta = 1, alpha = 0, and their S is not added to M: Dk's columns of free slots are
  zeroed). Chunks pass (M, S) on, a loop of about T / C steps.

Masked tokens are identity steps: the weights, the start weights, the momentum and the
position are carried through. Rates come in as theta (B, H, T) and the logs of eta and of
1 - alpha (<= 0, e.g. ``logsigmoid``), so products over long chunks never underflow into
0 * inf. Autograd goes through both forms (no hand-written backward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from statewise.ops.linear_attention import segsum
from statewise.ops.precision import float32_recurrence

MODES = ("recurrent", "chunk")
Weights = tuple[torch.Tensor, ...]  # (W,) or (W_1, W_2), each (B, H, out, in)


def silu_grad(a: torch.Tensor) -> torch.Tensor:
    """d silu(a) / da = s (1 + a (1 - s)), s = sigmoid(a)."""
    s = torch.sigmoid(a)
    return s * (1.0 + a * (1.0 - s))


def memory_read(weights: Weights, x: torch.Tensor) -> torch.Tensor:
    """M(x) for rows x (B, H, n, d_in): x W^T, or silu(x W_1^T) W_2^T."""
    for i, w in enumerate(weights):
        x = x @ w.transpose(-1, -2)
        if i + 1 < len(weights):
            x = F.silu(x)
    return x


def memory_grads(
    weights: Weights, k: torch.Tensor, v: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per token, the gradient of |M(k) - v|^2 with respect to each weight as its outer
    product factors (left (B, H, n, out), right (B, H, n, in)): grad W_i = left^T right
    summed over the n tokens, or per token left_t right_t^T (module docstring)."""
    if len(weights) == 1:
        return [(2.0 * (k @ weights[0].transpose(-1, -2) - v), k)]
    w1, w2 = weights
    a = k @ w1.transpose(-1, -2)
    z = F.silu(a)
    r2 = 2.0 * (z @ w2.transpose(-1, -2) - v)
    delta = (r2 @ w2) * silu_grad(a)
    return [(delta, k), (r2, z)]


# ------------------------------------------------------------------ the loop


def _token(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    theta: torch.Tensor,
    eta: torch.Tensor,
    keep: torch.Tensor,
    memory: Weights,
    start: Weights,
    momentum: Weights,
    at_start: torch.Tensor,
) -> tuple[torch.Tensor, Weights, Weights, Weights]:
    """One token for every row: q, k (B, H, d_k), v (B, H, d_v), theta, eta, keep = 1 - alpha
    (B, H), at_start (B,) bool: the token begins a chunk. Returns (o, memory, start, momentum)."""
    start = tuple(torch.where(at_start[:, None, None, None], m, s) for m, s in zip(memory, start))
    factors = memory_grads(start, k.unsqueeze(2), v.unsqueeze(2))
    theta, eta, keep = (c[:, :, None, None] for c in (theta, eta, keep))
    momentum = tuple(
        eta * s - theta * (left.transpose(-1, -2) @ right)
        for s, (left, right) in zip(momentum, factors)
    )
    memory = tuple(keep * m + s for m, s in zip(memory, momentum))
    return memory_read(memory, q.unsqueeze(2)).squeeze(2), memory, start, momentum


def neural_memory_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    theta: torch.Tensor,
    log_eta: torch.Tensor,
    log_keep: torch.Tensor,
    memory: Weights,
    start: Weights,
    momentum: Weights,
    pos: torch.Tensor,
    mask: torch.Tensor | None = None,
    chunk_size: int = 1,
) -> tuple[torch.Tensor, tuple[Weights, Weights, Weights, torch.Tensor]]:
    """The loop over tokens (module docstring)."""
    eta, keep = log_eta.exp(), log_keep.exp()
    outs = []
    for t in range(q.shape[2]):
        o, new_memory, new_start, new_momentum = _token(
            q[:, :, t],
            k[:, :, t],
            v[:, :, t],
            theta[:, :, t],
            eta[:, :, t],
            keep[:, :, t],
            memory,
            start,
            momentum,
            pos % chunk_size == 0,
        )
        outs.append(o)
        if mask is None:
            memory, start, momentum, pos = new_memory, new_start, new_momentum, pos + 1
        else:
            real = mask[:, t]
            memory, start, momentum = (
                tuple(torch.where(real[:, None, None, None], n, old) for n, old in zip(a, b))
                for a, b in ((new_memory, memory), (new_start, start), (new_momentum, momentum))
            )
            pos = pos + real.long()
    return torch.stack(outs, dim=2), (memory, start, momentum, pos)


# ------------------------------------------------------------------ chunkwise


def _chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    theta: torch.Tensor,
    log_eta: torch.Tensor,
    log_keep: torch.Tensor,
    used: torch.Tensor,
    memory: Weights,
    anchor: Weights,
    momentum: Weights,
) -> tuple[torch.Tensor, Weights, Weights]:
    """One chunk of C slots (B, H, C, ...): gradients at ``anchor``, the recurrences from
    (memory, momentum); ``used`` (B, 1, C) is 1 at real tokens, 0 at free slots (which add
    no momentum to M). Returns (o, memory, momentum) at the chunk's end."""
    decay_keep = segsum(log_keep).exp() * used.unsqueeze(-2)  # Dk diag(used), (B, H, C, C)
    decay_eta = segsum(log_eta).exp()  # De
    from_start_eta = log_eta.cumsum(-1).exp()  # Ge (B, H, C)
    from_start_keep = log_keep.cumsum(-1).exp()  # Gk
    mix = decay_keep @ decay_eta  # A
    carry = (decay_keep @ from_start_eta.unsqueeze(-1)).squeeze(-1)  # c
    factors = [(-theta.unsqueeze(-1) * left, right) for left, right in memory_grads(anchor, k, v)]

    x = q
    for i, (m, s, (left, right)) in enumerate(zip(memory, momentum, factors)):
        x = (
            from_start_keep.unsqueeze(-1) * (x @ m.transpose(-1, -2))
            + carry.unsqueeze(-1) * (x @ s.transpose(-1, -2))
            + ((x @ right.transpose(-1, -2)) * mix) @ left
        )
        if i + 1 < len(memory):
            x = F.silu(x)
    last_mix, last_eta = mix[..., -1, :].unsqueeze(-1), decay_eta[..., -1, :].unsqueeze(-1)
    gk, c, ge = (t[..., -1, None, None] for t in (from_start_keep, carry, from_start_eta))
    new_memory = tuple(
        gk * m + c * s + (last_mix * left).transpose(-1, -2) @ right
        for m, s, (left, right) in zip(memory, momentum, factors)
    )
    new_momentum = tuple(
        ge * s + (last_eta * left).transpose(-1, -2) @ right
        for s, (left, right) in zip(momentum, factors)
    )
    return x, new_memory, new_momentum


def neural_memory_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    theta: torch.Tensor,
    log_eta: torch.Tensor,
    log_keep: torch.Tensor,
    memory: Weights,
    start: Weights,
    momentum: Weights,
    pos: torch.Tensor,
    mask: torch.Tensor | None = None,
    chunk_size: int = 1,
) -> tuple[torch.Tensor, tuple[Weights, Weights, Weights, torch.Tensor]]:
    """Chunkwise (module docstring): chunks aligned with each row's own real-token count."""
    batch, heads, seq_len, _ = q.shape
    size = chunk_size
    real = torch.ones(batch, seq_len, dtype=torch.bool, device=q.device) if mask is None else mask
    offset = pos % size  # (B,): slots of the current chunk already used
    count = real.long().cumsum(1)  # (B, T)
    n_real = count[:, -1] if seq_len else torch.zeros_like(pos)
    n_chunks = int(((offset + n_real + size - 1) // size * (n_real > 0)).max()) if seq_len else 0
    if n_chunks == 0:  # no real token in any row: nothing changes
        return v.new_zeros(v.shape), (memory, start, momentum, pos)
    slots = n_chunks * size
    # each real token's slot, the others to a trash slot at the end (dropped)
    slot = torch.where(real, offset[:, None] + count - 1, torch.full_like(count, slots))

    def lay_out(x: torch.Tensor) -> torch.Tensor:
        """(B, H, T, ...) -> (B, H, N, C, ...) with zeros in the free slots."""
        index = slot[:, None].expand(batch, heads, seq_len)
        index = index.reshape(*index.shape, *([1] * (x.dim() - 3))).expand(x.shape)
        out = x.new_zeros(*x.shape[:2], slots + 1, *x.shape[3:]).scatter(2, index, x)
        return out[:, :, :slots].unflatten(2, (n_chunks, size))

    used = lay_out(real[:, None].expand(batch, heads, seq_len).to(q.dtype))[:, :1]
    # zeros are identity steps: theta = 0, eta = exp(0) = 1, 1 - alpha = exp(0) = 1
    q_, k_, v_, theta_, log_eta_, log_keep_ = (
        lay_out(x) for x in (q, k, v, theta, log_eta, log_keep)
    )
    first = (offset == 0)[:, None, None, None]
    anchor = tuple(torch.where(first, m, s) for m, s in zip(memory, start))
    outs, anchors = [], []
    for n in range(n_chunks):
        if n:
            anchor = memory
        anchors.append(anchor)
        o, memory, momentum = _chunk(
            q_[:, :, n],
            k_[:, :, n],
            v_[:, :, n],
            theta_[:, :, n],
            log_eta_[:, :, n],
            log_keep_[:, :, n],
            used[:, :, n],
            memory,
            anchor,
            momentum,
        )
        outs.append(o)
    o = torch.stack(outs, dim=2).flatten(2, 3)  # (B, H, slots, d_v)
    o = F.pad(o, (0, 0, 0, 1)).gather(
        2, slot[:, None, :, None].expand(batch, heads, seq_len, o.shape[-1])
    )
    # the start weights of each row's last chunk (unchanged in a row with no real token)
    last = ((offset + n_real - 1).clamp_min(0) // size)[:, None, None, None, None]
    start = tuple(
        torch.where(
            (n_real > 0)[:, None, None, None],
            torch.stack(a, dim=1).gather(1, last.expand(-1, 1, *s.shape[1:])).squeeze(1),
            s,
        )
        for a, s in zip(zip(*anchors), start)
    )
    return o, (memory, start, momentum, pos + n_real)


@float32_recurrence
def neural_memory(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    theta: torch.Tensor,
    log_eta: torch.Tensor,
    log_keep: torch.Tensor,
    memory: Weights,
    start: Weights,
    momentum: Weights,
    pos: torch.Tensor,
    mask: torch.Tensor | None = None,
    mode: str = "chunk",
    chunk_size: int = 1,
) -> tuple[torch.Tensor, tuple[Weights, Weights, Weights, torch.Tensor]]:
    """Titans' neural memory in ``mode`` "recurrent" or "chunk" (module docstring).

    q, k: (B, H, T, d_k); v: (B, H, T, d_v); theta: (B, H, T) learning rates; log_eta,
    log_keep: (B, H, T) logs of the momentum and of 1 - alpha (<= 0); memory, start,
    momentum: the weights (W,) or (W_1, W_2), each (B, H, out, in); pos: (B,) int64 real
    tokens seen; mask: (B, T) bool or None. Returns (o (B, H, T, d_v), (memory, start,
    momentum, pos)).
    """
    if len(memory) not in (1, 2) or not len(memory) == len(start) == len(momentum):
        raise ValueError("memory, start and momentum must each hold 1 or 2 weight matrices")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    args = (q, k, v, theta, log_eta, log_keep, memory, start, momentum, pos, mask, chunk_size)
    if mode == "recurrent":
        return neural_memory_recurrent(*args)
    if mode == "chunk":
        return neural_memory_chunk(*args)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
