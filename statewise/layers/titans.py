"""Titans' neural memory (Behrouz, Zhong, Mirrokni 2025, "Titans: Learning to Memorize at Test
Time") as a sequence mixer: a per-head MLP whose weights are trained while reading, by
gradient descent with momentum and forgetting on an associative loss.

Per token, H heads of key width d_k = D / H (values d_v = d_k):

    k_t = l2norm((W_K x_t)_h),  q_t = l2norm((W_Q x_t)_h),  v_t = (W_V x_t)_h
    theta_t = max_lr sigmoid(w_theta,h . x_t + b)    learning rate
    eta_t   = sigmoid(w_eta,h . x_t + b)             momentum
    alpha_t = sigmoid(w_alpha,h . x_t + b)           forgetting
    M(x) = W x (depth 1)  or  W_2 silu(W_1 x) (depth 2, hidden width expansion * d_k)
    S_t = eta_t S_{t-1} - theta_t grad_M |M_c(k_t) - v_t|^2
    M_t = (1 - alpha_t) M_{t-1} + S_t
    o_t = M_t(q_t)
    y_t = W_o concat_h( RMSNorm(o_t,h) * w )

M_c: the weights at the start of the token's chunk of ``chunk_size`` real tokens (counted
from the stream's start), so the chunk size is part of the function; chunk_size = 1 is
fully sequential gradient descent. The math, the hand-written gradients and both forms are
in :mod:`statewise.ops.neural_memory`. l2norm(x) = x / sqrt(|x|^2 + 1e-6).

The memory's initial weights M_0 are parameters (``memory_init_1``, ``memory_init_2``),
learned by backprop through the whole layer, as the paper's meta-learned initial memory.
The state stores the weights as offsets from them, so the initial state is all zeros:
{"memory_i": M - M_0, "start_i": M_c - M_0, "momentum_i": S (each (B, H, out, in)),
"pos": (B,) int64 real tokens seen}. Masked steps carry all of it, the position included.

auto mode: "recurrent" up to 4 tokens, "chunk" beyond (measured: docs/models/titans.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError
from statewise.layers.base import SequenceMixer
from statewise.layers.checks import positive_int, positive_number
from statewise.layers.deltanet import HeadRMSNorm, l2_normalise
from statewise.layers.registry import register
from statewise.ops.neural_memory import neural_memory

RECURRENT_UP_TO = 4  # auto mode's crossover


@register(
    "titans",
    family="test-time memory (MLP)",
    paper="Behrouz et al. 2025, Titans: Learning to Memorize at Test Time",
    state_size="3 * d * d",
)
class Titans(SequenceMixer):
    """Titans' neural memory (the memory module alone, as a mixer).

    Args:
        d_model: input and output width D, a multiple of n_heads.
        n_heads: H; each head has its own memory over keys of width D / H.
        depth: 1 (M(x) = W x, a gated delta-rule-like linear memory) or 2
            (M(x) = W_2 silu(W_1 x)).
        expansion: the depth-2 memory's hidden width is int(expansion * D / H).
        chunk_size: C, the real tokens per chunk sharing the gradient's weights.
        max_lr: the learning rate theta is max_lr * sigmoid(.). 0.01 by default: a
            chunk's gradients are summed at its start weights, so repeated tokens step
            up to chunk_size * theta along one key; with 0.1 the memory overflowed on
            128 tokens of text at initialisation (docs/models/titans.md).
        forget_init: the forgetting alpha starts near this value (its bias is
            logit(forget_init), its weights are nn.Linear's). 0.01 by default: from a
            zero bias (alpha near 0.5) a depth-2 memory decays within a few tokens to
            zero, where its gradient vanishes (docs/models/titans.md).
        norm_eps: epsilon of the per-head RMSNorm of the read.
        mode: "auto", "recurrent" or "chunk".

    State: see the module docstring; 3 H (d_h d_k + d_v d_h) floats (3 D^2 at the
    defaults) and the position.
    """

    modes = ("recurrent", "chunk")

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        depth: int = 2,
        expansion: float = 2.0,
        chunk_size: int = 16,
        max_lr: float = 0.01,
        forget_init: float = 0.01,
        norm_eps: float = 1e-5,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        self.n_heads = positive_int("n_heads", n_heads)
        if d_model % n_heads:
            raise ArgumentError(f"d_model={d_model} must be a multiple of n_heads={n_heads}")
        if depth not in (1, 2) or isinstance(depth, bool):
            raise ArgumentError(f"depth must be 1 or 2, got {depth!r}")
        self.depth = depth
        self.head_dim = d_model // n_heads
        self.hidden = int(positive_number("expansion", expansion) * self.head_dim)
        if depth == 2 and self.hidden <= 0:
            raise ArgumentError(f"expansion * d_model / n_heads must be >= 1, got {self.hidden}")
        self.chunk_size = positive_int("chunk_size", chunk_size)
        self.max_lr = positive_number("max_lr", max_lr)
        if self.max_lr > 1.0:
            raise ArgumentError(f"max_lr must be in (0, 1], got {max_lr!r}")
        self.forget_init = positive_number("forget_init", forget_init)
        if self.forget_init >= 1.0:
            raise ArgumentError(f"forget_init must be in (0, 1), got {forget_init!r}")

        width = n_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, width, bias=False)
        self.k_proj = nn.Linear(d_model, width, bias=False)
        self.v_proj = nn.Linear(d_model, width, bias=False)
        self.rate_proj = nn.Linear(d_model, 3 * n_heads)  # theta, eta, alpha
        d = self.head_dim
        shapes = [(d, d)] if depth == 1 else [(self.hidden, d), (d, self.hidden)]
        self.memory_init = nn.ParameterList(
            nn.Parameter(torch.randn(n_heads, out, inp) / math.sqrt(inp)) for out, inp in shapes
        )
        self.o_norm = HeadRMSNorm(d, norm_eps)
        self.o_proj = nn.Linear(width, d_model, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """alpha's bias at logit(forget_init), so alpha starts near forget_init."""
        self.rate_proj.bias[2 * self.n_heads :] = math.log(
            self.forget_init / (1 - self.forget_init)
        )

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, depth={self.depth}, "
            f"hidden={self.hidden}, chunk_size={self.chunk_size}, max_lr={self.max_lr}, "
            f"forget_init={self.forget_init}, "
            f"mode={self.mode!r}"
        )

    def auto_mode(self, seq_len: int) -> str:
        return "recurrent" if seq_len <= RECURRENT_UP_TO else "chunk"

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, H * d) -> (B, H, T, d)."""
        return x.unflatten(-1, (self.n_heads, self.head_dim)).transpose(1, 2)

    def _forward(
        self, x: torch.Tensor, state: dict, mask: torch.Tensor | None, mode: str
    ) -> tuple[torch.Tensor, dict]:
        if x.shape[1] == 0:
            return x.new_zeros(x.shape), state
        q = l2_normalise(self._heads(self.q_proj(x)))
        k = l2_normalise(self._heads(self.k_proj(x)))
        v = self._heads(self.v_proj(x))
        rates = self.rate_proj(x).unflatten(-1, (3, self.n_heads)).permute(2, 0, 3, 1)
        theta = self.max_lr * torch.sigmoid(rates[0])  # (B, H, T)
        log_eta, log_keep = F.logsigmoid(rates[1]), F.logsigmoid(-rates[2])
        init = tuple(w.to(x.dtype) for w in self.memory_init)
        layers = range(1, self.depth + 1)
        o, (memory, start, momentum, pos) = neural_memory(
            q,
            k,
            v,
            theta,
            log_eta,
            log_keep,
            tuple(w0 + state[f"memory_{i}"] for i, w0 in zip(layers, init)),
            tuple(w0 + state[f"start_{i}"] for i, w0 in zip(layers, init)),
            tuple(state[f"momentum_{i}"] for i in layers),
            state["pos"],
            mask,
            mode=mode,
            chunk_size=self.chunk_size,
        )
        new_state = {}
        for i, w0, m, s, p in zip(layers, init, memory, start, momentum):
            new_state[f"memory_{i}"] = m - w0
            new_state[f"start_{i}"] = s - w0
            new_state[f"momentum_{i}"] = p
        new_state["pos"] = pos
        y = self.o_proj(self.o_norm(o.transpose(1, 2)).flatten(-2))
        return y, new_state

    def _step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        y, state = self._forward(x_t.unsqueeze(1), state, None, "recurrent")
        return y.squeeze(1), state

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict:
        state = {}
        for i, w in enumerate(self.memory_init, start=1):
            for key in ("memory", "start", "momentum"):
                state[f"{key}_{i}"] = torch.zeros(batch_size, *w.shape, device=device, dtype=dtype)
        state["pos"] = torch.zeros(batch_size, device=device, dtype=torch.long)
        return state
