"""The Block-Recurrent Transformer layer (Hutchins, Schlag, Wu, Dyer, Neyshabur 2022,
"Block-Recurrent Transformers") as a sequence mixer: S state vectors, updated once per block
of W tokens by attention, carry information from block to block.

The real tokens are cut into blocks of W = block_size (counted from the stream's start).
With H heads of width d, LN a LayerNorm over D, C the state vectors (S, D) before the block,
and attn(q, K, V) = softmax(q K^T / sqrt(d)) V per head:

    token t:     q_t, r_t = W_q x_t (self / cross queries),  k_t, v_t = W_kv x_t
    state i:     p_i, u_i = W_sq LN(c_i),                     g_i, h_i = W_skv LN(c_i)

Vertical direction (the output of token t, at place j of its block):

    y_t = W_o [ attn(q_t, k_{block, <= j}, v_{block, <= j}) ; attn(r_t, g_{1..S}, h_{1..S}) ]

Horizontal direction (when the block's W-th token arrives; the state's self-attention sees
every state vector, its cross-attention every token of the block):

    z_i = W_so [ attn(p_i, g_{1..S}, h_{1..S}) ; attn(u_i, k_{block}, v_{block}) ]
    c_i <- sigma(b_f) * c_i + (1 - sigma(b_f)) * z_i          (the paper's "fixed" gate)

The keys and values are shared by the two directions, as in the paper; the queries are not.
The initial state vectors C_0 are a parameter (``state_init``); the state stores C - C_0, so
the initial state is zero: {"c": (B, S, D) C - C_0, "x": (B, W - 1, D) the inputs of the
current block so far (left-aligned, later slots zero), "pos": (B,) int64 tokens of the
current block seen}. A sequence split mid-block continues the block from "x"; a masked token
neither counts towards a block nor is attended to (the state is carried through it).

Modes, exact to each other:

- "block": the real tokens (the buffered ones first) are packed to the front of each row and
  cut into blocks; a loop over blocks runs the state updates, then every token's output is
  computed at once ((B, blocks, W, W) scores, and the state cross-attention);
- "recurrent": one token at a time (what ``step`` does): the token's keys are computed over
  the buffered block, the state is updated when the block completes.

auto is "recurrent" for a single token, "block" beyond. See docs/models/block_recurrent.md
for what is simplified against the paper (no positional encoding inside the block, no
attention to the previous block, one gate and no MLP in the state update).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from statewise.layers.base import SequenceMixer
from statewise.layers.checks import positive_int
from statewise.layers.registry import register
from statewise.ops.tree import carry


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head: q (..., Tq, H, d), k and v (..., Tk, H, d),
    allowed (..., Tq, Tk) bool or None (all keys) -> (..., Tq, H d). Every query must be
    allowed at least one key."""
    scores = torch.einsum("...qhd,...khd->...hqk", q, k) * q.shape[-1] ** -0.5
    if allowed is not None:
        scores = scores.masked_fill(~allowed.unsqueeze(-3), float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.einsum("...hqk,...khd->...qhd", weights, v).flatten(-2)


@register(
    "block_recurrent",
    family="block-recurrent attention",
    paper="Hutchins et al. 2022, Block-Recurrent Transformers",
    state_size="79 * d",
)
class BlockRecurrent(SequenceMixer):
    """A Block-Recurrent Transformer layer: causal attention inside blocks of ``block_size``
    tokens and cross-attention to ``n_state`` state vectors, which are updated per block.

    Args:
        d_model: input, output and state-vector width D.
        n_heads: heads H of every attention.
        head_dim: width d of each head (default D // H).
        n_state: state vectors S.
        block_size: tokens W per block.
        forget_bias: initial b_f of the gate sigma(b_f) (2.0: 0.88 of the state kept).
        mode: "auto", "block" or "recurrent".

    State: {"c": (B, S, D), "x": (B, W - 1, D), "pos": (B,) int64}; state_size (S + W - 1) D,
    79 D at the defaults.
    """

    modes = ("recurrent", "block")

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        head_dim: int | None = None,
        n_state: int = 16,
        block_size: int = 64,
        forget_bias: float = 2.0,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        self.n_heads = positive_int("n_heads", n_heads)
        if head_dim is None:
            head_dim = positive_int("d_model // n_heads", d_model // self.n_heads)
        self.head_dim = positive_int("head_dim", head_dim)
        self.n_state = positive_int("n_state", n_state)
        self.block_size = positive_int("block_size", block_size)
        width = self.n_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, 2 * width, bias=False)
        self.kv_proj = nn.Linear(d_model, 2 * width, bias=False)
        self.state_norm = nn.LayerNorm(d_model)
        self.state_q_proj = nn.Linear(d_model, 2 * width, bias=False)
        self.state_kv_proj = nn.Linear(d_model, 2 * width, bias=False)
        self.o_proj = nn.Linear(2 * width, d_model, bias=False)
        self.state_o_proj = nn.Linear(2 * width, d_model, bias=False)
        self.forget_bias = nn.Parameter(torch.full((d_model,), float(forget_bias)))
        self.state_init = nn.Parameter(torch.randn(self.n_state, d_model))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
            f"n_state={self.n_state}, block_size={self.block_size}, mode={self.mode!r}"
        )

    def auto_mode(self, seq_len: int) -> str:
        return "recurrent" if seq_len <= 1 else "block"

    # ------------------------------------------------------------ pieces
    def _heads(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., 2 H d) -> two (..., H, d)."""
        a, b = t.chunk(2, dim=-1)
        shape = a.shape[:-1] + (self.n_heads, self.head_dim)
        return a.reshape(shape), b.reshape(shape)

    def _state_kv(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the state vectors C = C_0 + c: (..., S, H, d) each."""
        states = self.state_init.to(c.dtype) + c
        return self._heads(self.state_kv_proj(self.state_norm(states)))

    def _outputs(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        allowed: torch.Tensor,
        c: torch.Tensor,
    ) -> torch.Tensor:
        """The vertical direction: queries x (..., Tq, D) against the block's keys/values k, v
        (..., Tk, H, d) where allowed (..., Tq, Tk), and against the state c (..., S, D)."""
        q, r = self._heads(self.q_proj(x))
        g, h = self._state_kv(c)
        own = attend(q, k, v, allowed)
        cross = attend(r, g, h, None)
        return self.o_proj(torch.cat([own, cross], dim=-1))

    def _update(
        self, c: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """The horizontal direction: the state offsets c (N, S, D) after a block whose keys
        and values are k, v (N, W, H, d), valid (N, W) (a row with no valid key attends to all
        of them: its update is discarded by the caller, but stays finite)."""
        states = self.state_init.to(c.dtype) + c
        normed = self.state_norm(states)
        p, u = self._heads(self.state_q_proj(normed))
        g, h = self._heads(self.state_kv_proj(normed))
        valid = valid | ~valid.any(dim=-1, keepdim=True)
        own = attend(p, g, h, None)
        cross = attend(u, k, v, valid[:, None, :].expand(-1, self.n_state, -1))
        z = self.state_o_proj(torch.cat([own, cross], dim=-1))
        keep = torch.sigmoid(self.forget_bias)
        return keep * states + (1 - keep) * z - self.state_init.to(c.dtype)

    # ----------------------------------------------------------- contract
    def _forward(
        self, x: torch.Tensor, state: dict, mask: torch.Tensor | None, mode: str
    ) -> tuple[torch.Tensor, dict]:
        if x.shape[1] == 0:
            return x.new_zeros(x.shape), {k: t.contiguous() for k, t in state.items()}
        if mode == "recurrent":
            outs = []
            for t in range(x.shape[1]):
                y_t, new = self._step(x[:, t], state)
                state = new if mask is None else carry(mask[:, t], new, state)
                outs.append(y_t)
            return torch.stack(outs, dim=1), state
        return self._blocks(x, state, mask)

    def _blocks(
        self, x: torch.Tensor, state: dict, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict]:
        batch, seq_len, width = x.shape
        w = self.block_size
        pos = state["pos"]
        slots = torch.arange(w - 1, device=x.device)
        real = mask if mask is not None else x.new_ones(batch, seq_len, dtype=torch.bool)
        valid = torch.cat([slots[None, :] < pos[:, None], real], dim=1)  # (B, W - 1 + T)
        seq = torch.cat([state["x"], x], dim=1)
        # the real tokens to the front of each row, in order; the rest (zero-padded) after
        order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices
        seq = seq.gather(1, order[..., None].expand_as(seq))
        n_blocks = -(-seq.shape[1] // w)
        seq = F.pad(seq, (0, 0, 0, n_blocks * w - seq.shape[1]))
        count = valid.sum(dim=1)  # real tokens per row, the buffered ones included
        packed_valid = torch.arange(n_blocks * w, device=x.device)[None, :] < count[:, None]
        k, v = self._heads(self.kv_proj(seq))
        k, v = k.unflatten(1, (n_blocks, w)), v.unflatten(1, (n_blocks, w))
        block_valid = packed_valid.view(batch, n_blocks, w)
        # horizontal: the state before each block (a block completes iff its W-th token is real)
        c, befores = state["c"], []
        for i in range(n_blocks):
            befores.append(c)
            complete = block_valid[:, i, -1]
            if not bool(complete.any()):
                befores.extend([c] * (n_blocks - i - 1))
                break
            c = carry(complete, self._update(c, k[:, i], v[:, i], block_valid[:, i]), c)
        # vertical: every token at once, causal inside its block, plus its own key always
        causal = torch.ones(w, w, dtype=torch.bool, device=x.device).tril()
        allowed = (block_valid[:, :, None, :] & causal) | torch.eye(
            w, dtype=torch.bool, device=x.device
        )
        y = self._outputs(
            seq.view(batch, n_blocks, w, width), k, v, allowed, torch.stack(befores, 1)
        )
        # back to the input's order: input t went to packed place inverse[W - 1 + t]
        inverse = torch.argsort(order, dim=1)[:, w - 1 :]
        y = y.flatten(1, 2).gather(1, inverse[..., None].expand(-1, -1, width))
        # the buffer: the tokens of the unfinished last block
        left, done = count % w, count // w
        index = (done[:, None] * w + slots).clamp(max=n_blocks * w - 1)
        kept = seq.gather(1, index[..., None].expand(-1, -1, width))
        kept = torch.where((slots[None, :] < left[:, None])[..., None], kept, 0)
        return y, {"c": c, "x": kept, "pos": left}

    def _step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        w, pos = self.block_size, state["pos"]
        places = torch.arange(w, device=x_t.device)
        block = torch.cat([state["x"], x_t.new_zeros(x_t.shape[0], 1, x_t.shape[1])], dim=1)
        block = torch.where((places == pos[:, None])[..., None], x_t[:, None], block)
        valid = places[None, :] <= pos[:, None]  # (B, W)
        block = torch.where(valid[..., None], block, 0)
        k, v = self._heads(self.kv_proj(block))
        y = self._outputs(x_t[:, None], k, v, valid[:, None], state["c"])[:, 0]
        complete = pos == w - 1
        c = state["c"]
        if bool(complete.any()):
            c = carry(complete, self._update(c, k, v, valid), c)
        kept = torch.where(complete[:, None, None], 0, block[:, : w - 1])
        return y, {"c": c, "x": kept, "pos": torch.where(complete, 0, pos + 1)}

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict:
        return {
            "c": torch.zeros(batch_size, self.n_state, self.d_model, device=device, dtype=dtype),
            "x": torch.zeros(
                batch_size, self.block_size - 1, self.d_model, device=device, dtype=dtype
            ),
            "pos": torch.zeros(batch_size, device=device, dtype=torch.long),
        }
