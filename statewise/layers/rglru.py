"""Hawk's recurrent block around the RG-LRU (De et al. 2024, "Griffin: Mixing Gated Linear
Recurrences with Local Attention for Efficient Language Models").

For x_t (width D), with the RG-LRU of width N = lru_width, H heads of width N / H:

    g_t = gelu_tanh(W_y x_t + b_y)                           gate branch        (N)
    u_t = W_x x_t + b_x                                      (N)
    c_t = sum_{j=0..K-1} w_j * u_{t-K+1+j} + b_c             causal depthwise conv, width K
    r_t = sigmoid(c_t W_a + b_a),  i_t = sigmoid(c_t W_i + b_i)   block-diagonal (per head)
    log a_t = -8 * r_t * softplus(Lambda)                     a_t in (0, 1]
    h_t = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * c_t)       the RG-LRU
    y_t = W_out (h_t * g_t) + b_out

At a document start (the token's position is 0) a_t = 0 and the multiplier sqrt(1 - a_t^2)
is 1, exactly as the reference implementations reset. The state therefore keeps a position
counter ``pos`` (real tokens seen) next to the last K-1 conv inputs and h. (a_t = 0 is
applied by zeroing h_{t-1} of the starting rows, which is the same and cheaper.)

h_t = a_t h_{t-1} + b_t is a diagonal linear recurrence, run by
:func:`statewise.ops.scan.linear_recurrence` as a loop over time ("recurrent") or a doubling
scan ("scan"). 1 - a_t^2 is computed as -expm1(2 log a_t) (no cancellation when a_t is
close to 1); the square root's backward is clipped at 1000 as in the reference code, so
training never sees an infinite gradient where a_t -> 1.

negative_eigenvalues=True (Grazzi et al. 2025) maps a_t to 2 a_t - 1 in (-1, 1]; then
1 - a_t^2 = 4 e (1 - e) with e = exp(log a_t), computed as -4 e expm1(log a_t). The reset
still uses a_t = 0 and multiplier 1.

Masked steps: a = 1, b = 0 (h passes through), the position does not advance, and the conv
window skips them: each real token's conv sees the previous K-1 *real* inputs. With a mask
the sequence (conv state + inputs) is packed so that real entries are contiguous, the conv
runs on the packed sequence and its outputs are gathered back.

Parameter names and shapes match transformers' RecurrentGemmaRecurrentBlock one-to-one
(linear_y, linear_x, linear_out, conv_1d, rg_lru.{recurrent_param, input_gate_weight,
input_gate_bias, recurrent_gate_weight, recurrent_gate_bias}), so its state_dict loads as is.

auto mode is "recurrent": measured on this machine (2 cores, torch 2.13, fp32, one
thread's CPU time, forward + backward of the whole layer, B8 D=N=256 H4): T=256: recurrent
67 ms, scan 98 ms; T=1024: 258 ms vs 552 ms; T=4096: 1.8 s vs 4.2 s. See
docs/models/rglru.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError
from statewise.layers.base import SequenceMixer
from statewise.layers.checks import flag, no_weight_decay, positive_int
from statewise.layers.registry import register
from statewise.ops.conv import causal_conv1d
from statewise.ops.scan import linear_recurrence

# layer mode -> the form of ops.scan.linear_recurrence
_FORMS = {"recurrent": "loop", "scan": "scan"}
MAX_SQRT_GRADIENT = 1000.0
GATE_SCALE = 8.0  # the constant c in log a_t = -c r_t softplus(Lambda)


class _BoundedSqrt(torch.autograd.Function):
    """sqrt(x) whose derivative 1 / (2 sqrt(x)) is capped at MAX_SQRT_GRADIENT."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.sqrt(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad / torch.sqrt(torch.clamp(4.0 * x, min=MAX_SQRT_GRADIENT**-2))


class RGLRU(nn.Module):
    """The RG-LRU's parameters: the gates (block-diagonal, one bw x bw block per head, with
    biases) and Lambda (``recurrent_param``). Same names and shapes as transformers'
    RecurrentGemmaRglru; a gate block multiplies from the right: r_h = c_h W_a[h] + b_a[h]."""

    def __init__(self, width: int, n_heads: int) -> None:
        super().__init__()
        self.width, self.n_heads, self.block_width = width, n_heads, width // n_heads
        blocks = (n_heads, self.block_width, self.block_width)
        self.recurrent_param = nn.Parameter(torch.empty(width))
        self.input_gate_weight = nn.Parameter(torch.empty(blocks))
        self.input_gate_bias = nn.Parameter(torch.empty(n_heads, self.block_width))
        self.recurrent_gate_weight = nn.Parameter(torch.empty(blocks))
        self.recurrent_gate_bias = nn.Parameter(torch.empty(n_heads, self.block_width))
        no_weight_decay(self.input_gate_bias, self.recurrent_gate_bias)  # biases, per head
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, min_rad: float = 0.9, max_rad: float = 0.999) -> None:
        """The paper's init: gate weights N(0, 0.01 / bw), zero biases, and Lambda such
        that softplus(Lambda) = -log(a) with a^2 ~ U(min_rad^2, max_rad^2)."""
        std = math.sqrt(0.01 / self.block_width)
        nn.init.normal_(self.input_gate_weight, std=std)
        nn.init.normal_(self.recurrent_gate_weight, std=std)
        nn.init.zeros_(self.input_gate_bias)
        nn.init.zeros_(self.recurrent_gate_bias)
        a_squared = torch.empty_like(self.recurrent_param).uniform_(min_rad**2, max_rad**2)
        softplus_value = -0.5 * torch.log(a_squared)  # = -log a
        self.recurrent_param.copy_(torch.log(torch.expm1(softplus_value)))  # softplus^-1

    def gates(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(r, i) = sigmoid of the block-diagonal maps of c (..., N)."""
        blocks = c.unflatten(-1, (self.n_heads, self.block_width))

        def gate(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(torch.einsum("...hi,hij->...hj", blocks, weight) + bias)

        r = gate(self.recurrent_gate_weight, self.recurrent_gate_bias)
        i = gate(self.input_gate_weight, self.input_gate_bias)
        return r.flatten(-2), i.flatten(-2)


@register(
    "rglru",
    family="diagonal linear",
    paper="De et al. 2024, Griffin: Mixing Gated Linear Recurrences with Local Attention",
    state_size="4 * d",
)
class RGLRUBlock(SequenceMixer):
    """Hawk's recurrent block: a GeLU gate branch times conv1d -> RG-LRU, then a projection.

    Args:
        d_model: input and output width D.
        lru_width: width N of the conv and the recurrence (default D).
        n_heads: number of diagonal blocks H of the gate matrices; must divide N.
        conv_width: kernel size K of the causal depthwise conv (1 = no temporal conv).
        negative_eigenvalues: map a_t in (0, 1] to 2 a_t - 1 in (-1, 1] (Grazzi et al. 2025).
        mode: "auto" (= "recurrent", see the module docstring), "recurrent" or "scan".

    State: {"conv": (B, K-1, N) the last K-1 real conv inputs, "h": (B, N),
    "pos": (B,) int64 real tokens seen (0 = the next token starts a document)}.
    Parameters: 3 D N + 2 N + D (three Linears) + N K + N (conv) + 2 N^2 / H + 3 N (gates
    and Lambda) = 3 D N + D + N (K + 6) + 2 N^2 / H.
    """

    modes = ("recurrent", "scan")

    def __init__(
        self,
        d_model: int,
        lru_width: int | None = None,
        n_heads: int = 4,
        conv_width: int = 4,
        negative_eigenvalues: bool = False,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        width = d_model if lru_width is None else positive_int("lru_width", lru_width)
        positive_int("n_heads", n_heads)
        positive_int("conv_width", conv_width)
        if width % n_heads:
            raise ArgumentError(f"n_heads={n_heads} must divide lru_width={width}")
        flag("negative_eigenvalues", negative_eigenvalues)
        self.lru_width, self.n_heads, self.conv_width = width, n_heads, conv_width
        self.negative_eigenvalues = negative_eigenvalues
        self.linear_y = nn.Linear(d_model, width)
        self.linear_x = nn.Linear(d_model, width)
        self.linear_out = nn.Linear(width, d_model)
        self.conv_1d = nn.Conv1d(width, width, kernel_size=conv_width, groups=width)
        self.rg_lru = RGLRU(width, n_heads)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """As the Griffin code: N(0, 1/fan_in) projections, small conv, zero biases."""
        for linear in (self.linear_x, self.linear_y, self.linear_out):
            nn.init.normal_(linear.weight, std=linear.in_features**-0.5)
            nn.init.zeros_(linear.bias)
        nn.init.normal_(self.conv_1d.weight, std=math.sqrt(0.01 / self.conv_width))
        nn.init.zeros_(self.conv_1d.bias)
        self.rg_lru.reset_parameters()

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, lru_width={self.lru_width}, n_heads={self.n_heads}, "
            f"conv_width={self.conv_width}, negative_eigenvalues={self.negative_eigenvalues}, "
            f"mode={self.mode!r}"
        )

    def auto_mode(self, seq_len: int) -> str:
        return "recurrent"

    # ------------------------------------------------------------ pieces
    def _coefficients(
        self, c: torch.Tensor, starts: tuple[torch.Tensor, ...] | None, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """a_t and b_t = sqrt(1 - a_t^2) i_t c_t of h_t = a_t h_{t-1} + b_t.

        starts indexes the document starts (the tokens at position 0) in the leading dims
        of c: there the multiplier is 1. (a_t = 0 there too; the caller gets that effect by
        zeroing h_{t-1}, which is cheaper than rewriting a.) Masked steps get a = 1, b = 0.
        """
        r, i = self.rg_lru.gates(c)
        log_a = r * (-GATE_SCALE * F.softplus(self.rg_lru.recurrent_param))
        if self.negative_eigenvalues:
            e = torch.exp(log_a)
            a, one_minus_a2 = 2.0 * e - 1.0, -4.0 * e * torch.expm1(log_a)
        else:
            a, one_minus_a2 = torch.exp(log_a), -torch.expm1(2.0 * log_a)
        if starts is not None:  # sqrt(1) = 1; in place, as nothing saved this tensor
            one_minus_a2.index_put_(starts, one_minus_a2.new_ones(()))
        b = _BoundedSqrt.apply(one_minus_a2) * (i * c)
        if mask is not None:
            keep = mask.unsqueeze(-1)
            a = torch.where(keep, a, torch.ones_like(a))
            b = torch.where(keep, b, torch.zeros_like(b))
        return a, b

    @staticmethod
    def _starts(
        pos: torch.Tensor, h: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[tuple[torch.Tensor, ...] | None, torch.Tensor]:
        """Rows whose next real token starts a document (pos == 0, and a real token in this
        input): the (row, time) index of that token, and h with those rows zeroed."""
        fresh = pos == 0
        if mask is not None:
            fresh &= mask.any(dim=1)
        if not bool(fresh.any()):
            return None, h
        rows = fresh.nonzero().squeeze(1)
        h = torch.where(fresh.unsqueeze(-1), torch.zeros_like(h), h)
        if mask is None:
            return (rows, torch.zeros_like(rows)), h
        return (rows, mask[rows].to(torch.int8).argmax(dim=1)), h

    # ----------------------------------------------------------- contract
    def _forward(
        self, x: torch.Tensor, state: dict, mask: torch.Tensor | None, mode: str
    ) -> tuple[torch.Tensor, dict]:
        seq_len = x.shape[1]
        if seq_len == 0:
            return x.new_zeros(x.shape), state
        gate = F.gelu(self.linear_y(x), approximate="tanh")
        c, conv_state = causal_conv1d(
            self.linear_x(x), self.conv_1d.weight[:, 0], self.conv_1d.bias, state["conv"], mask
        )
        pos0 = state["pos"]
        starts, h0 = self._starts(pos0, state["h"], mask)
        a, b = self._coefficients(c, starts, mask)
        h = linear_recurrence(a, b, h0, mode=_FORMS[mode])
        y = self.linear_out(h * gate)
        seen = seq_len if mask is None else mask.long().sum(dim=1)
        return y, {"conv": conv_state, "h": h[:, -1].clone(), "pos": pos0 + seen}

    def _step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        gate = F.gelu(self.linear_y(x_t), approximate="tanh")
        c, conv_state = causal_conv1d(
            self.linear_x(x_t).unsqueeze(1),
            self.conv_1d.weight[:, 0],
            self.conv_1d.bias,
            state["conv"],
        )
        c = c.squeeze(1)
        starts, h = self._starts(state["pos"], state["h"], None)
        a, b = self._coefficients(c, starts if starts is None else starts[:1], None)
        h = torch.addcmul(b, a, h)
        y = self.linear_out(h * gate)
        return y, {"conv": conv_state, "h": h, "pos": state["pos"] + 1}

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict:
        width = self.lru_width
        return {
            "conv": torch.zeros(batch_size, self.conv_width - 1, width, device=device, dtype=dtype),
            "h": torch.zeros(batch_size, width, device=device, dtype=dtype),
            "pos": torch.zeros(batch_size, device=device, dtype=torch.long),
        }
