"""The Recurrent Memory Transformer (Bulatov et al. 2022) around any block stack.

A sequence of token embeddings e_1 .. e_T is cut into segments of S tokens
(``model.segment_len``); segment k (tokens X_k, at most S of them) runs through the block
stack f, from a fresh state, as

    [H_read, H_k, H_write] = f([M_k, X_k, M_k])          M_k: (M, D), M = model.memory_tokens
    M_{k+1} = H_write                                     (the outputs at the last M positions)
    M_1 = a learned (M, D) parameter, initialised N(0, 1)

and the logits are read at the token positions H_k only. The stack is causal, so a token
sees the memory written by earlier segments (read at the start) and the tokens before it in
its own segment, and the write positions see the whole segment. The memory is the stack's
output (after the final norm, RMS about 1 per position; hence the N(0, 1) start).
Gradients flow through M_k from a later segment's loss into every earlier segment
(backpropagation through segments); ``model.memory_bptt`` = k > 0 detaches the memory after
every k-th segment of a forward.

Deliberate choices: each segment starts the block stack from a fresh state (a recurrent
layer's state or attention's key-value cache is not carried; only the memory is), as in
the paper, so positions restart at 0 in every segment and global attention needs
max_len >= S + 2M only. The same M_k fills the write positions (the paper's decoder
layout). A last, partial segment writes no memory.

The model's state is {"memory": (B, M, D), "tokens": (B, S) ids of the current segment so
far (zeros after), "count": (B,) how many}; a forward continues the current segment (its
buffered tokens are run again, their logits dropped), so a forward in pieces equals the
forward whole, and ``step`` equals the forward token by token. A step runs the memory and
the segment so far through the stack (quadratic in S over a segment) and, when the
segment is full, the write positions too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from statewise.errors import ArgumentError
from statewise.models.block import Backbone
from statewise.models.config import ModelConfig

RMTState = dict[str, torch.Tensor]
Embed = Callable[[torch.Tensor], torch.Tensor]


class RecurrentMemory(nn.Module):
    """The learned initial memory and the segment loop of a Recurrent Memory Transformer."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_memory = config.memory_tokens
        self.segment_len = config.segment_len
        self.bptt = config.memory_bptt
        self.vocab_size = config.vocab_size
        self.initial = nn.Parameter(torch.randn(config.memory_tokens, config.d_model))

    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> RMTState:
        memory = self.initial.detach().to(device=device, dtype=dtype or self.initial.dtype)
        device = memory.device
        return {
            "memory": memory.expand(batch_size, -1, -1).clone(),
            "tokens": torch.zeros(batch_size, self.segment_len, dtype=torch.long, device=device),
            "count": torch.zeros(batch_size, dtype=torch.long, device=device),
        }

    def forward(
        self,
        backbone: Backbone,
        embed: Embed,
        ids: torch.Tensor,
        state: RMTState | None = None,
        mask: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, RMTState]:
        """ids (B, T) -> the stack's outputs at the token positions (B, T, D) and the state
        after them. ``mask`` (B, T) marks real tokens; segments are cut by column, so right
        padding gives each row what it gets alone. ``resets`` (B, T): a document starting
        at a True starts from the initial memory with its own segments; the rows holding
        one run one by one, document by document (the others together)."""
        if resets is None or not bool(resets.any()):
            return self._run(backbone, embed, ids, state, mask)
        if not isinstance(resets, torch.Tensor) or resets.shape != ids.shape:
            raise ArgumentError(f"resets must have the shape of ids {tuple(ids.shape)}")
        if mask is not None:
            raise ArgumentError("mask: a Recurrent Memory Transformer takes no mask with resets")
        batch = ids.shape[0]
        start = self._start(state, batch, ids.device)
        start = {"memory": start[0], "tokens": start[1], "count": start[2]}
        plain = [b for b in range(batch) if not bool(resets[b].any())]
        pieces: dict[int, tuple[torch.Tensor, RMTState]] = {}
        if plain:
            rows = torch.tensor(plain, device=ids.device)
            h, after = self._run(backbone, embed, ids[rows], _rows(start, rows), None)
            pieces.update({b: (h[i : i + 1], _rows(after, [i])) for i, b in enumerate(plain)})
        for b in sorted(set(range(batch)) - set(plain)):
            cuts = [0, *resets[b].nonzero().flatten().tolist(), ids.shape[1]]
            current, outputs = _rows(start, [b]), []
            for i, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:])):
                if i > 0 or bool(resets[b, 0]):
                    current = None  # a new document: the initial memory
                if hi > lo:
                    h, current = self._run(backbone, embed, ids[b : b + 1, lo:hi], current, None)
                    outputs.append(h)
            pieces[b] = (torch.cat(outputs, dim=1), current)
        h = torch.cat([pieces[b][0] for b in range(batch)])
        keys = ("memory", "tokens", "count")
        return h, {k: torch.cat([pieces[b][1][k] for b in range(batch)]) for k in keys}

    def _run(
        self,
        backbone: Backbone,
        embed: Embed,
        ids: torch.Tensor,
        state: RMTState | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, RMTState]:
        """The forward of rows without resets."""
        batch, length = ids.shape
        if mask is not None and state is not None:
            raise ArgumentError("mask: a Recurrent Memory Transformer takes no mask with a state")
        memory, tokens, count = self._start(state, batch, ids.device)
        if batch and bool((count != count[0]).any()):
            # rows stand at different points of their segments: one token at a time
            if mask is not None:  # unreachable (no state with a mask), kept for clarity
                raise ArgumentError("mask: rows at different segment positions")
            outputs, current = [], {"memory": memory, "tokens": tokens, "count": count}
            for t in range(length):
                h_t, current = self.step(backbone, embed, ids[:, t], current)
                outputs.append(h_t)
            return torch.stack(outputs, dim=1), current
        done = int(count[0]) if batch else 0
        seq = torch.cat([tokens[:, :done], ids], dim=1)
        real = None
        if mask is not None:
            real = torch.cat([mask.new_ones(batch, done), mask], dim=1)
        outputs, memory, rest = self._segments(backbone, embed, seq, memory, real)
        tokens = torch.zeros_like(tokens)
        tokens[:, : rest.shape[1]] = rest
        count = torch.full_like(count, rest.shape[1])
        h = outputs[:, done:] if length else memory.new_zeros(batch, 0, memory.shape[-1])
        return h, {"memory": memory, "tokens": tokens, "count": count}

    def step(
        self, backbone: Backbone, embed: Embed, ids_t: torch.Tensor, state: RMTState | None = None
    ) -> tuple[torch.Tensor, RMTState]:
        """One token per row, ids_t (B,) -> the stack's output there (B, D) and the state."""
        batch = ids_t.shape[0]
        memory, tokens, count = self._start(state, batch, ids_t.device)
        rows = torch.arange(batch, device=ids_t.device)
        tokens = tokens.clone()
        tokens[rows, count] = ids_t
        count = count + 1
        full = count == self.segment_len
        if bool(full.any()):  # some row completes its segment: run the write positions too
            x = torch.cat([memory, embed(tokens), memory], dim=1)
        else:  # causal: positions after a row's token do not change its output
            x = torch.cat([memory, embed(tokens[:, : int(count.max())])], dim=1)
        out, _ = backbone(x, None, None)
        h_t = out[rows, self.n_memory + count - 1]
        if bool(full.any()):
            written = out[:, self.n_memory + self.segment_len :]
            memory = torch.where(full[:, None, None], written, memory)
            count = torch.where(full, 0, count)
        positions = torch.arange(self.segment_len, device=tokens.device)
        tokens = torch.where(positions < count[:, None], tokens, 0)
        return h_t, {"memory": memory, "tokens": tokens, "count": count}

    def _segments(
        self,
        backbone: Backbone,
        embed: Embed,
        seq: torch.Tensor,
        memory: torch.Tensor,
        real: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run ``seq`` (B, L) segment by segment from ``memory``; returns the outputs at
        every token (B, L, D), the memory after the last full segment, and the tokens of
        the last partial segment (B, L mod S)."""
        batch, n_mem, size = seq.shape[0], self.n_memory, self.segment_len
        outputs = []
        for k, start in enumerate(range(0, seq.shape[1], size)):
            chunk = seq[:, start : start + size]
            full = chunk.shape[1] == size
            x = torch.cat([memory, embed(chunk), *([memory] if full else [])], dim=1)
            m = None
            if real is not None:
                ones = real.new_ones(batch, n_mem)
                m = torch.cat([ones, real[:, start : start + size], *([ones] if full else [])], 1)
            out, _ = backbone(x, None, m)
            outputs.append(out[:, n_mem : n_mem + chunk.shape[1]])
            if full:
                memory = out[:, n_mem + size :]
                if self.bptt and (k + 1) % self.bptt == 0:
                    memory = memory.detach()
        whole = torch.cat(outputs, dim=1) if outputs else memory[:, :0]
        return whole, memory, seq[:, seq.shape[1] - seq.shape[1] % size :]

    def _start(
        self, state: RMTState | None, batch: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if state is None:  # the learned memory itself, so its gradient reaches it
            fresh = self.init_state(batch, device)
            memory = self.initial.to(device)[None].expand(batch, -1, -1)
            return memory, fresh["tokens"], fresh["count"]
        if not isinstance(state, dict) or set(state) != {"memory", "tokens", "count"}:
            raise ArgumentError(
                "state does not fit this model: a Recurrent Memory Transformer's state is "
                "{'memory', 'tokens', 'count'} (model.init_state)"
            )
        memory, tokens, count = state["memory"], state["tokens"], state["count"]
        shapes = (
            (memory, (batch, self.n_memory, self.initial.shape[1]), True),
            (tokens, (batch, self.segment_len), False),
            (count, (batch,), False),
        )
        for name, (leaf, shape, is_float) in zip(("memory", "tokens", "count"), shapes):
            if (
                not isinstance(leaf, torch.Tensor)
                or tuple(leaf.shape) != shape
                or leaf.is_floating_point() != is_float
            ):
                raise ArgumentError(f"state does not fit this model and batch: state[{name!r}]")
        if count.numel() and (count.min() < 0 or count.max() >= self.segment_len):
            raise ArgumentError(f"state['count'] must lie in [0, {self.segment_len})")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ArgumentError(f"state['tokens'] must lie in [0, {self.vocab_size})")
        if not torch.isfinite(memory).all():
            raise ArgumentError("state does not fit this model: state['memory'] is not finite")
        return memory, tokens, count


def _rows(state: RMTState, rows: torch.Tensor | list[int]) -> RMTState:
    return {k: v[rows] for k, v in state.items()}
