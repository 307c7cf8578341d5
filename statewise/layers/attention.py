"""Causal softmax attention (Vaswani et al. 2017), global or local (sliding window), with
multi-query / grouped-query heads and partial rotary embeddings, as in Griffin's local
attention block (De et al. 2024) and transformers' RecurrentGemma attention.

With H query heads and G = H / H_kv query heads per key/value head, head width d:

    q_t = R(p_t) (W_q x_t + b_q)_h,   k_t = R(p_t) (W_k x_t + b_k)_j,   v_t = (W_v x_t + b_v)_j
    o_t,h = sum_{s in S(t)} softmax_s(q_t,h . k_s,j / sqrt(d)) v_s,j      j = h // G
    y_t = W_o [o_t,1 .. o_t,H] + b_o

S(t) = the real tokens s <= t with p_s > p_t - window (all real s <= t when global); p_t
counts the real tokens before t (padding neither counts nor is attended to). R(p) rotates
the first r = 2 ceil(f d / 2) features of each head as in RoPE's "rotate half" form (feature
i pairs with i + r/2, angle p * theta^(-2i / floor(f d))), with f = rotary_fraction (0.5 in
RecurrentGemma); the other features are not rotated.

State: a KV cache of the most recent keys (already rotated) and values, right-aligned
(newest last), of fixed capacity C, and the position counter p:

- local attention (window W): C = W - 1, so memory is O(W) however long the stream;
- global attention: C = max_len, and the cache grows with the stream until it is full; a
  forward or step that would go past max_len tokens raises a ValueError (the contract needs
  a fixed-shape state, so global attention's unbounded cache is bounded by max_len).

Slots that hold no token (fewer than C seen) are kept at zero, and a forward attends only to
the slots that hold a token in some row. Modes, all exact:

- "parallel": all queries at once, a (T, used + T) masked score matrix per head;
- "chunk": queries in blocks of chunk_size, each against the keys its window can reach,
  O(T (chunk_size + window)) instead of O(T^2) (with padding, the real tokens are first
  packed to the end of each row so that index gaps equal position gaps);
- "recurrent": the KV-cache loop, one query at a time (what ``step`` does).

auto is "parallel" up to chunk_size tokens, "chunk" beyond: measured on this machine
(2 cores, torch 2.13, fp32, one thread's CPU time, forward + backward, B8 D256 H4 MQA,
window 128): T=1024: parallel 422 ms, chunk 233 ms; T=2048: 1.45 s vs 0.54 s; global
attention T=2048: 1.45 s vs 1.05 s; recurrent T=256: ~400 ms vs parallel 48 ms.
See docs/models/attention.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError
from statewise.layers.base import SequenceMixer
from statewise.layers.registry import register
from statewise.ops.tree import carry


def rotary_frequencies(head_dim: int, fraction: float, theta: float) -> torch.Tensor:
    """theta^(-2i / floor(fraction * head_dim)) for i < ceil(floor(fraction * head_dim) / 2),
    float64 (transformers' default RoPE with partial_rotary_factor)."""
    dim = int(head_dim * fraction)
    if dim == 0:
        return torch.zeros(0, dtype=torch.float64)
    return theta ** -(torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate features (i, i + n) of x (..., d) by angles with cos, sin (..., n), i < n;
    features 2n .. d-1 pass unchanged."""
    n = cos.shape[-1]
    x1, x2, rest = x[..., :n], x[..., n : 2 * n], x[..., 2 * n :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


def _packing(valid: torch.Tensor) -> torch.Tensor:
    """(B, S) indices that move each row's valid entries to its end, keeping their order."""
    return torch.sort(valid.to(torch.int8), dim=1, stable=True).indices


def _pack(t: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """t (B, S, ...) reordered along dim 1 by order (B, S)."""
    index = order.reshape(order.shape + (1,) * (t.dim() - 2)).expand_as(t)
    return t.gather(1, index)


def _zero_unfilled(cache: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
    """cache (B, S, H, d) with the slots where filled (B, S) is False set to zero."""
    return torch.where(filled[:, :, None, None], cache, torch.zeros_like(cache))


def _int_arg(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ArgumentError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


@register(
    "attention",
    family="attention",
    paper="Vaswani et al. 2017, Attention Is All You Need; local MQA as in De et al. 2024",
    state_size="4096 * d",
)
class Attention(SequenceMixer):
    """Causal multi-head softmax attention with a KV cache as its state.

    Args:
        d_model: input and output width D.
        n_heads: query heads H.
        n_kv_heads: key/value heads (default H; 1 = multi-query); must divide H.
        head_dim: width d of each head (default D // H).
        window: attend to the last ``window`` real tokens (the token itself included);
            None or 0 = global attention.
        max_len: cache capacity of global attention (ignored with a window).
        rotary_fraction: fraction of each head's features that get rotary position
            embeddings (transformers' partial_rotary_factor); 0 = no positional encoding.
        rope_theta: the RoPE base.
        qkv_bias: biases on the q, k, v projections.
        out_bias: bias on the output projection.
        chunk_size: query block length of the "chunk" mode.
        mode: "auto" ("parallel" up to chunk_size tokens, then "chunk"), "parallel",
            "chunk" or "recurrent".

    State: {"k": (B, C, H_kv, d), "v": (B, C, H_kv, d), "pos": (B,) int64}, C = window - 1
    or max_len. Parameters (same names and shapes as RecurrentGemma's attention): q_proj
    (D -> H d), k_proj, v_proj (D -> H_kv d), o_proj (H d -> D).
    """

    modes = ("recurrent", "parallel", "chunk")
    # A unit-scale, untied token embedding: with GPT-2's N(0, 0.02^2) the token is buried
    # under this layer's unit-scale output (weights N(0, 1/fan_in), as Griffin, whose
    # embedding is unit-scale too), and a 2-layer model stayed at 0.39 accuracy on MQAR
    # after 2800 steps; with N(0, 1) it was at 1.000 by step 2000 (docs/arena.md,
    # "Embedding initialisation"). Untied, as tying N(0, 1) rows makes the first logits
    # ~sqrt(d_model) large.
    embed_std = 1.0
    tie_embeddings = False

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        window: int | None = None,
        max_len: int = 2048,
        rotary_fraction: float = 1.0,
        rope_theta: float = 10000.0,
        qkv_bias: bool = False,
        out_bias: bool = False,
        chunk_size: int = 128,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        n_heads = _int_arg("n_heads", n_heads)
        n_kv_heads = n_heads if n_kv_heads is None else _int_arg("n_kv_heads", n_kv_heads)
        if n_heads % n_kv_heads:
            raise ArgumentError(f"n_kv_heads={n_kv_heads} must divide n_heads={n_heads}")
        if head_dim is None:
            if d_model < n_heads:
                raise ArgumentError(f"n_heads={n_heads} is larger than d_model={d_model}")
            head_dim = d_model // n_heads
        head_dim = _int_arg("head_dim", head_dim)
        window = 0 if window is None else _int_arg("window", window, minimum=0)
        max_len = _int_arg("max_len", max_len)
        self.chunk_size = _int_arg("chunk_size", chunk_size)
        if not isinstance(rotary_fraction, (int, float)) or not 0 <= rotary_fraction <= 1:
            raise ArgumentError(f"rotary_fraction must be in [0, 1], got {rotary_fraction!r}")
        if not isinstance(rope_theta, (int, float)) or rope_theta <= 0:
            raise ArgumentError(f"rope_theta must be positive, got {rope_theta!r}")
        freqs = rotary_frequencies(head_dim, rotary_fraction, rope_theta)
        if 2 * len(freqs) > head_dim:
            raise ArgumentError(
                f"rotary_fraction={rotary_fraction} rotates {2 * len(freqs)} features, more "
                f"than head_dim={head_dim}"
            )
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.window, self.max_len = window, max_len
        self.capacity = window - 1 if window else max_len
        self.rotary_fraction, self.rope_theta = float(rotary_fraction), float(rope_theta)
        self._freqs = freqs  # float64, not a buffer: it stays float64 under .to(dtype)
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=out_bias)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """N(0, 1/fan_in) weights, zero biases (as Griffin)."""
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.o_proj):
            nn.init.normal_(proj.weight, std=proj.in_features**-0.5)
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}, window={self.window or None}, capacity={self.capacity}, "
            f"rotary_fraction={self.rotary_fraction}, mode={self.mode!r}"
        )

    def auto_mode(self, seq_len: int) -> str:
        return "parallel" if seq_len <= self.chunk_size else "chunk"

    # ------------------------------------------------------------ pieces
    def _project(
        self, x: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, T, H, d), k and v (B, T, H_kv, d), q and k rotated at positions (B, T)."""
        shape = x.shape[:-1]
        q = self.q_proj(x).view(*shape, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(*shape, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(*shape, self.n_kv_heads, self.head_dim)
        if len(self._freqs):
            freqs = self._freqs.to(x.device)
            angle = positions.to(torch.float64)[..., None, None] * freqs  # (..., 1, n)
            cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
            q, k = rotate_half(q, cos, sin), rotate_half(k, cos, sin)
        return q, k, v

    def _check_capacity(self, pos_after: torch.Tensor) -> None:
        if not self.window and int(pos_after.max()) > self.capacity:
            raise ArgumentError(
                f"global attention keeps at most max_len={self.max_len} tokens in its KV cache, "
                f"but this input reaches {int(pos_after.max())}; build the layer with a larger "
                "max_len, or use a window"
            )

    def _filled(self, pos: torch.Tensor, slots: int) -> torch.Tensor:
        """(B, slots) bool: of the last ``slots`` cache slots, which hold a token (slot j of
        them iff j >= slots - min(pos, C))."""
        index = torch.arange(slots, device=pos.device)
        return index >= slots - pos.clamp(max=self.capacity)[:, None]

    def _used(self, pos: torch.Tensor) -> int:
        """How many of the last cache slots hold a token in some row (the rest are empty
        in every row and need not be attended to)."""
        return int(pos.clamp(max=self.capacity).max()) if self.capacity else 0

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor
    ) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v over allowed keys; q (B, T, H, d), k/v (B, S, H_kv, d),
        allowed (B, T, S) -> (B, T, H d)."""
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=allowed.unsqueeze(1),
            scale=self.head_dim**-0.5,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        return out.transpose(1, 2).flatten(2)

    def _allowed(
        self, q_pos: torch.Tensor, key_pos: torch.Tensor, key_valid: torch.Tensor, own: int
    ) -> torch.Tensor:
        """(B, Tq, S) bool: key s is real, not in the future and inside the window of query
        t; query t always sees key own + t (its own key), so no row is empty."""
        allowed = key_valid[:, None, :] & (key_pos[:, None, :] <= q_pos[:, :, None])
        if self.window:
            allowed &= key_pos[:, None, :] > q_pos[:, :, None] - self.window
        t = torch.arange(q_pos.shape[1], device=q_pos.device)
        s = torch.arange(key_pos.shape[1], device=q_pos.device)
        return allowed | (s[None, :] == t[:, None] + own)

    def _new_cache(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        valid: torch.Tensor | None,
        pos: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The last C valid entries of keys/values (B, S, H_kv, d), right-aligned, empty
        slots zeroed; valid None means the valid entries are already the last ones; pos (B,)
        is the position counter after them."""
        if valid is not None and not bool(valid.all()):
            keys, values = _pack(keys, _packing(valid)), _pack(values, _packing(valid))
        kept = min(self.capacity, keys.shape[1])
        keys, values = keys[:, keys.shape[1] - kept :], values[:, values.shape[1] - kept :]
        # the kept slots of rows with fewer than `kept` tokens hold no token: zero them (the
        # padding below is zero already, so only these need the where: a 2048-slot global
        # cache made a 64-token training step 4x slower when the whole cache went through it)
        filled = self._filled(pos, kept)
        if not bool(filled.all()):
            keys, values = _zero_unfilled(keys, filled), _zero_unfilled(values, filled)
        short = self.capacity - kept
        if short > 0:  # fewer entries than slots: pad on the left
            keys = F.pad(keys, (0, 0, 0, 0, short, 0))
            values = F.pad(values, (0, 0, 0, 0, short, 0))
        return keys, values

    # ----------------------------------------------------------- contract
    def _forward(
        self, x: torch.Tensor, state: dict, mask: torch.Tensor | None, mode: str
    ) -> tuple[torch.Tensor, dict]:
        batch, seq_len, _ = x.shape
        if seq_len == 0:  # the state given back, as real tensors (not _fresh_state's views)
            return x.new_zeros(x.shape), {k: t.contiguous() for k, t in state.items()}
        pos0 = state["pos"]
        real = mask if mask is not None else x.new_ones(batch, seq_len, dtype=torch.bool)
        before = real.long().cumsum(dim=1) - real.long()
        positions = pos0[:, None] + before  # (B, T): real tokens before each step
        pos_after = pos0 + real.long().sum(dim=1)
        self._check_capacity(pos_after)
        q, k, v = self._project(x, positions)
        if mode == "recurrent":
            return self._forward_loop(q, k, v, state, mask)
        used = self._used(pos0)  # only the last `used` cache slots can hold tokens
        first = self.capacity - used
        keys = torch.cat([state["k"][:, first:], k], dim=1)  # (B, used + T, H_kv, d)
        values = torch.cat([state["v"][:, first:], v], dim=1)
        slot_pos = pos0[:, None] - used + torch.arange(used, device=x.device)
        key_pos = torch.cat([slot_pos, positions], dim=1)
        key_valid = torch.cat([self._filled(pos0, used), real], dim=1)
        if mode == "parallel":
            o = self._attend(q, keys, values, self._allowed(positions, key_pos, key_valid, used))
        else:
            if mask is not None:  # real entries last, in order: index gaps = position gaps
                order_k, order_q = _packing(key_valid), _packing(real)
                keys, values = _pack(keys, order_k), _pack(values, order_k)
                key_pos, key_valid = _pack(key_pos, order_k), _pack(key_valid, order_k)
                q, positions = _pack(q, order_q), _pack(positions, order_q)
            o = self._attend_blocks(q, keys, values, positions, key_pos, key_valid, used)
            if mask is not None:
                o = _pack(o, torch.argsort(order_q, dim=1))  # back to the input order
                key_valid = None  # already packed
        cache_k, cache_v = self._new_cache(keys, values, key_valid, pos_after)
        return self.o_proj(o), {"k": cache_k, "v": cache_v, "pos": pos_after}

    def _attend_blocks(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        q_pos: torch.Tensor,
        key_pos: torch.Tensor,
        key_valid: torch.Tensor,
        used: int,
    ) -> torch.Tensor:
        """Queries in blocks of chunk_size; a block attends to the keys its window can
        reach: O(T (chunk_size + window)) with a window, the causal half without one.
        Requires the real entries to be packed last (no gaps inside a row's real tokens)."""
        outs = []
        size = self.chunk_size
        for j0 in range(0, q.shape[1], size):
            j1 = min(j0 + size, q.shape[1])
            lo = max(0, used + j0 - self.window + 1) if self.window else 0
            hi = used + j1
            allowed = self._allowed(
                q_pos[:, j0:j1], key_pos[:, lo:hi], key_valid[:, lo:hi], used + j0 - lo
            )
            outs.append(self._attend(q[:, j0:j1], keys[:, lo:hi], values[:, lo:hi], allowed))
        return torch.cat(outs, dim=1)

    def _forward_loop(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        state: dict,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict]:
        outs = []
        for t in range(q.shape[1]):
            o, new = self._attend_one(q[:, t], k[:, t], v[:, t], state)
            state = new if mask is None else carry(mask[:, t], new, state)
            outs.append(o)
        return self.o_proj(torch.stack(outs, dim=1)), state

    def _attend_one(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: dict
    ) -> tuple[torch.Tensor, dict]:
        """One query (B, H, d) against the cache and its own key; the cache drops its oldest
        slot (empty, or out of the window) and takes the new key."""
        pos, used = state["pos"], self._used(state["pos"])
        first = self.capacity - used
        keys = torch.cat([state["k"][:, first:], k.unsqueeze(1)], dim=1)
        values = torch.cat([state["v"][:, first:], v.unsqueeze(1)], dim=1)
        own = q.new_ones(q.shape[0], 1, dtype=torch.bool)
        allowed = torch.cat([self._filled(pos, used), own], dim=1)
        o = self._attend(q.unsqueeze(1), keys, values, allowed.unsqueeze(1)).squeeze(1)
        new_k = torch.cat([state["k"][:, 1:], k.unsqueeze(1)], dim=1)
        new_v = torch.cat([state["v"][:, 1:], v.unsqueeze(1)], dim=1)
        pos = pos + 1
        filled = self._filled(pos, self.capacity)
        new = {"k": _zero_unfilled(new_k, filled), "v": _zero_unfilled(new_v, filled), "pos": pos}
        return o, new

    def _step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        self._check_capacity(state["pos"] + 1)
        q, k, v = self._project(x_t, state["pos"])
        o, state = self._attend_one(q, k, v, state)
        return self.o_proj(o), state

    def _fresh_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> dict:
        """The empty state as zero views (expand) of one element: a forward from it reads
        none of the cache (used = 0), so the megabytes of zeros need not be written."""
        zero = torch.zeros((), device=device, dtype=dtype)
        shape = (batch, self.capacity, self.n_kv_heads, self.head_dim)
        pos = torch.zeros(batch, device=device, dtype=torch.long)
        return {"k": zero.expand(shape), "v": zero.expand(shape), "pos": pos}

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict:
        shape = (batch_size, self.capacity, self.n_kv_heads, self.head_dim)
        return {
            "k": torch.zeros(shape, device=device, dtype=dtype),
            "v": torch.zeros(shape, device=device, dtype=dtype),
            "pos": torch.zeros(batch_size, device=device, dtype=torch.long),
        }
