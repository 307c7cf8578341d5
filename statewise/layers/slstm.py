"""sLSTM, the scalar-memory LSTM of xLSTM (Beck et al. 2024, "xLSTM: Extended Long Short-Term
Memory"), as a sequence mixer.

Per channel, with H heads of width d = D / H and R_g block-diagonal (one d x d block per
head, the "heads" of the paper: no mixing between heads inside the recurrence):

    z~_t = W_z x_t + R_z h_{t-1} + b_z      z_t = tanh(z~_t)          cell input
    i~_t = W_i x_t + R_i h_{t-1} + b_i      i_t = exp(i~_t)           exponential input gate
    f~_t = W_f x_t + R_f h_{t-1} + b_f      f_t = sigmoid(f~_t)       forget gate
    o~_t = W_o x_t + R_o h_{t-1} + b_o      o_t = sigmoid(o~_t)       output gate
    c_t = f_t c_{t-1} + i_t z_t             n_t = f_t n_{t-1} + i_t
    h_t = o_t c_t / n_t
    y_t = MultiHeadLayerNorm(h_t)           per head, learned scale, no bias

Stabilised, as in the paper: the state holds (h, c, n, m) with true memory (e^m c, e^m n),
m_t = max(log f_t + m_{t-1}, log i_t), i'_t = exp(log i_t - m_t), f'_t = exp(log f_t +
m_{t-1} - m_t), c_t = f'_t c_{t-1} + i'_t z_t, n_t = f'_t n_{t-1} + i'_t. h_t = o_t c_t / n_t
does not depend on m. An empty memory (n_{t-1} = 0, e.g. the zero state) has no scale, so
its stabiliser is taken as -inf: m_t = log i_t and f'_t = 0. This is what the xlstm
package's vanilla sLSTM does on the first step (there for the whole batch at once, here per
channel); it keeps n_t >= 1 from the first token on, so h_t = o c / n never divides by a
number that underflowed.

The input projections of all T steps are ONE GEMM (W: 4D x D, dense; the xlstm package uses
block-diagonal "headwise" input projections, a special case); the recurrence is then either
the fused numba kernel of statewise.kernels.cells (backend "numba", CPU, float32/64: per
step and (head, batch rows) the d x 4d matvec and the update, with a hand-written BPTT
backward), or its twin here: a loop over time, one batched matmul (baddbmm over heads) and
a few elementwise ops per step, differentiated by autograd. Masked steps (mask False) carry
(h, c, n, m) through unchanged.

What of the xLSTM sLSTM block is here: the sLSTM layer (cell + per-head norm). The block's
optional causal conv (feeding i and f) and its gated MLP (factor 4/3) are left out: the
conv would add a window state, and statewise's block brings its own MLP. No output
projection, as in the xlstm package (heads mix in the block's MLP).

Only the "recurrent" mode exists: the cell is nonlinear in h_{t-1}.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from statewise import kernels
from statewise.errors import ArgumentError
from statewise.layers.base import SequenceMixer
from statewise.layers.checks import positive_int, positive_number
from statewise.layers.registry import register

_STATE_KEYS = ("h", "c", "n", "m")


def slstm_pointwise(raw: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The gates and the stabilised state update of one step.

    raw: (..., 4, w) pre-activations in the order i, f, z, o; state (h, c, n, m), each
    (..., w). Returns the new (h, c, n, m).
    """
    _, c, n, m = state
    i_pre, f_pre, z_pre, o_pre = raw.unbind(-2)
    log_f = F.logsigmoid(f_pre)
    m_prev = m.masked_fill(n == 0, float("-inf"))  # an empty memory has no scale
    m_new = torch.maximum(log_f + m_prev, i_pre)
    f_act = torch.exp(log_f + m_prev - m_new)
    i_act = torch.exp(i_pre - m_new)
    c_new = f_act * c + i_act * torch.tanh(z_pre)
    n_new = f_act * n + i_act
    h_new = torch.sigmoid(o_pre) * c_new / n_new
    return h_new, c_new, n_new, m_new


@register(
    "slstm",
    family="nonlinear",
    paper="Beck et al. 2024, xLSTM: Extended Long Short-Term Memory",
    state_size="4 * d",
)
class SLSTM(SequenceMixer):
    """The sLSTM layer: exponential gating, scalar memory, block-diagonal recurrence per head.

    Args:
        d_model: input, hidden and output width D.
        n_heads: number of heads H; must divide D (head width d = D / H).
        norm_eps: eps of the per-head layer norm on the output.
        mode: "auto" or "recurrent" (the only mode).

    State: {"h", "c", "n", "m"}, each (B, D): hidden state, stabilised cell and normaliser,
    and the stabiliser; zeros from ``init_state`` (an empty memory).
    Parameters: in_proj (D -> 4D with bias; rows i, f, z, o, each laid out head by head),
    recurrent_weight (4, H, d, d): R_g's block for head h is recurrent_weight[g, h] (out, in);
    norm_weight (D): 4 D^2 + 4 D + 4 D d + D = 4 D^2 + 4 D^2 / H + 5 D.
    """

    modes = ("recurrent",)

    def __init__(
        self, d_model: int, n_heads: int = 4, norm_eps: float = 1e-5, mode: str = "auto"
    ) -> None:
        super().__init__(d_model, mode)
        self.n_heads = positive_int("n_heads", n_heads)
        if d_model % n_heads:
            raise ArgumentError(f"n_heads={n_heads} must divide d_model={d_model}")
        self.norm_eps = positive_number("norm_eps", norm_eps)
        self.head_dim = d_model // n_heads
        self.in_proj = nn.Linear(d_model, 4 * d_model)
        self.recurrent_weight = nn.Parameter(torch.empty(4, n_heads, self.head_dim, self.head_dim))
        self.norm_weight = nn.Parameter(torch.ones(d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # the xlstm package's sLSTM init with bias_init="small_init": small-init input weights,
        # zero recurrent weights, forget biases spread over 3..6 within each head, other biases 0
        nn.init.normal_(self.in_proj.weight, std=math.sqrt(2.0 / (5.0 * self.d_model)))
        nn.init.zeros_(self.recurrent_weight)
        with torch.no_grad():
            bias = self.in_proj.bias.view(4, self.n_heads, self.head_dim)
            bias.zero_()
            bias[1] = torch.linspace(3.0, 6.0, self.head_dim)
        nn.init.ones_(self.norm_weight)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, mode={self.mode!r}"

    def auto_mode(self, seq_len: int) -> str:
        return "recurrent"

    # ----------------------------------------------------------- pieces
    def _recurrent_matrix(self) -> torch.Tensor:
        """(H, d_in, 4 d_out): per head, h_{t-1} @ it gives the four gates' recurrent terms."""
        return self.recurrent_weight.permute(1, 3, 0, 2).reshape(
            self.n_heads, self.head_dim, 4 * self.head_dim
        )

    def _to_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (H, B, d)."""
        return t.view(t.shape[0], self.n_heads, self.head_dim).transpose(0, 1)

    def _from_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(H, B, d) -> (B, D)."""
        return t.transpose(0, 1).reshape(t.shape[1], self.d_model)

    def _norm(self, h: torch.Tensor) -> torch.Tensor:
        """Per-head layer norm of h (N, D) with a learned scale."""
        return F.group_norm(h, self.n_heads, self.norm_weight, None, self.norm_eps)

    def _loop(
        self, wx: torch.Tensor, state: dict, mask: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], dict]:
        """wx: (T, H, B, 4d) input terms (bias included). Returns the h_t (H, B, d), the state."""
        rec = self._recurrent_matrix()
        heads, batch, d = self.n_heads, wx.shape[2], self.head_dim
        s = tuple(self._to_heads(state[key]) for key in _STATE_KEYS)
        keep = None if mask is None else mask.t()  # (T, B)
        hs = []
        # unbind, not wx[t]: one stack in the backward instead of T full-size scatters
        for t, wx_t in enumerate(wx.unbind(0)):
            raw = torch.baddbmm(wx_t, s[0], rec).view(heads, batch, 4, d)
            new = slstm_pointwise(raw, s)
            if keep is not None:  # a masked step carries the state through
                row = keep[t][None, :, None]  # (1, B, 1) against (H, B, d)
                new = tuple(torch.where(row, a, b) for a, b in zip(new, s))
            s = new
            hs.append(s[0])
        return hs, {key: self._from_heads(v) for key, v in zip(_STATE_KEYS, s)}

    def _input_terms(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> W x + b as (T, H, B, 4 d): one GEMM, laid out for the loop."""
        batch, seq_len, _ = x.shape
        wx = self.in_proj(x).view(batch, seq_len, 4, self.n_heads, self.head_dim)
        return wx.permute(1, 3, 0, 2, 4).reshape(seq_len, self.n_heads, batch, 4 * self.head_dim)

    def _kernel(
        self, x: torch.Tensor, state: dict, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict]:
        """The numba kernel's path: returns h (B*T, D) and the final state."""
        from statewise.kernels.cells import fused_recurrence

        batch, seq_len, _ = x.shape
        heads, d = self.n_heads, self.head_dim
        wx = self.in_proj(x).view(batch, seq_len, 4, heads, d).transpose(2, 3)
        weight = self.recurrent_weight.transpose(0, 1).reshape(heads, 4 * d, d)
        leaves = tuple(state[key].reshape(batch, heads, d) for key in _STATE_KEYS)
        h, final = fused_recurrence(
            "slstm", wx.reshape(batch, seq_len, heads, 4 * d), weight, None, leaves, mask
        )
        final_state = {key: v.reshape(batch, self.d_model) for key, v in zip(_STATE_KEYS, final)}
        return h.reshape(batch * seq_len, self.d_model), final_state

    # ---------------------------------------------------------- contract
    def _forward(
        self, x: torch.Tensor, state: dict, mask: torch.Tensor | None, mode: str
    ) -> tuple[torch.Tensor, dict]:
        batch, seq_len, _ = x.shape
        if seq_len == 0:
            return x.new_zeros(x.shape), state
        if (
            kernels.current() == "numba"
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64)
        ):
            h, state = self._kernel(x, state, mask)
        else:
            hs, state = self._loop(self._input_terms(x), state, mask)
            h = torch.stack(hs, dim=0)  # (T, H, B, d)
            h = h.permute(2, 0, 1, 3).reshape(batch * seq_len, self.d_model)
        return self._norm(h).view(batch, seq_len, self.d_model), state

    def _step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        hs, state = self._loop(self._input_terms(x_t.unsqueeze(1)), state, None)
        return self._norm(self._from_heads(hs[0])), state

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict:
        return {
            key: torch.zeros(batch_size, self.d_model, device=device, dtype=dtype)
            for key in _STATE_KEYS
        }
