"""mLSTM, the matrix-memory LSTM of xLSTM (Beck et al. 2024, "xLSTM: Extended Long Short-Term
Memory"), as a sequence mixer.

Per head h (H heads; key width d_k, value width d_v per head):

    q_t = (W_q x_t)_h,   k_t = (W_k x_t)_h / sqrt(d_k),   v_t = (W_v x_t)_h
    log i_t = w_i,h . x_t + b_i,h                        exponential input gate, i_t = e^{log i_t}
    f_t = sigmoid(w_f,h . x_t + b_f,h)                   forget gate in (0, 1)
    C_t = f_t C_{t-1} + i_t k_t^T v_t,   n_t = f_t n_{t-1} + i_t k_t
    h~_t = q_t C_t / max(|q_t . n_t|, 1)
    y_t = W_out (sigmoid(W_o x_t) * MultiHeadLayerNorm(h~_t))

computed stabilised (state (C, n, m), see :mod:`statewise.ops.mlstm`, which also holds the
three forms). Optionally the gate pre-activations are soft-capped, c tanh(. / c), as in
xLSTM-7B (``gate_soft_cap``).

What of the xLSTM mLSTM *block* belongs here: this mixer is the mLSTM layer of xLSTM-7B
(Beck et al. 2025, the xlstm package's ``xlstm_large`` and transformers' xLSTM): q, k, v,
gates and the output gate read x directly, and a per-head norm and the output projection
follow the cell. The 2024 paper's mLSTM block additionally wraps the cell in an
up-projection (factor 2), a causal conv (width 4, SiLU) feeding q and k, a learnable skip
from the conv output and a SiLU(z) gate before the down-projection. Those parts are the
block's, not the cell's: statewise's block (norm + mixer + MLP, residual) plays the
up/down-projection's role, and a conv would add a window state to every mLSTM. They are
left out; docs/models/mlstm.md compares the two.

Negative eigenvalues (Grazzi et al. 2025, ``negative_eigenvalues=True``): the forget gate
becomes 2 sigmoid(f~) - 1 = tanh(f~ / 2) in (-1, 1). The stabiliser works with its
log-magnitude log|tanh(f~/2)| = log(-expm1(-|f~|)) - softplus(-|f~|) and the sign is
carried separately (a product of signs along each segment in the parallel/chunk forms).

Masked steps (mask False) use log i = -inf, log f = 0 (sign +1): (C, n, m) pass unchanged.

auto mode: "recurrent" for a single token, "parallel" up to one chunk, "chunk" beyond;
measured on this machine, see docs/models/mlstm.md and :meth:`MLSTM.auto_mode`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError
from statewise.layers.base import SequenceMixer
from statewise.layers.checks import flag, positive_int, positive_number
from statewise.layers.registry import register
from statewise.ops.linear_attention import check_compute_dtype
from statewise.ops.mlstm import mlstm, mlstm_step, zero_state


def head_width(name: str, d_model: int, factor: float, n_heads: int) -> int:
    """int(d_model * factor) / n_heads; ValueError unless that is a positive whole number."""
    total = int(d_model * positive_number(name, factor))
    if total <= 0 or total % n_heads:
        raise ArgumentError(
            f"int(d_model * {name}) = {total} must be a positive multiple of n_heads={n_heads}"
        )
    return total // n_heads


def signed_log_forget(pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For f = 2 sigmoid(pre) - 1 = tanh(pre / 2): (log|f|, sign f), without cancellation.

    |f| = (1 - e^-a) / (1 + e^-a) with a = |pre|, so log|f| = log(-expm1(-a)) - softplus(-a).
    The sign of f = 0 (pre = 0 exactly) is taken as +1; log|f| is then -inf, so it never matters.
    """
    a = pre.abs()
    log_abs = torch.log(-torch.expm1(-a)) - F.softplus(-a)
    return log_abs, torch.where(pre < 0, -1.0, 1.0).to(pre.dtype)


@register(
    "mlstm",
    family="matrix state",
    paper="Beck et al. 2024, xLSTM: Extended Long Short-Term Memory",
    state_size="d * d // 8 + d // 2 + 4",
)
class MLSTM(SequenceMixer):
    """The mLSTM layer: multi-head matrix memory with exponential input gates.

    Args:
        d_model: input and output width D.
        n_heads: number of heads H.
        qk_dim_factor: query/key width H d_k = int(D * qk_dim_factor) (xLSTM-7B: 0.5).
        v_dim_factor: value width H d_v = int(D * v_dim_factor) (xLSTM-7B: 1.0).
        chunk_size: chunk length of the chunkwise form.
        negative_eigenvalues: forget gate 2 sigmoid - 1 in (-1, 1) instead of sigmoid.
        gate_soft_cap: if given, gate pre-activations become c tanh(pre / c) (xLSTM-7B: 15).
        norm_eps: eps of the per-head layer norm.
        mode: "auto", "recurrent", "parallel" or "chunk".
        compute_dtype: "float32" or "bfloat16": the dtype of the chunk form's GEMMs (the
            state and its sums across chunks stay in the input dtype; see
            :func:`statewise.ops.linear_attention.resolve_compute_dtype`).

    State: {"C": (B, H, d_k, d_v), "n": (B, H, d_k), "m": (B, H)}, the stabilised memory,
    normaliser and stabiliser; zeros from ``init_state``.
    Parameters: q_proj, k_proj (D -> H d_k), v_proj, o_proj (D -> H d_v), all without bias;
    i_proj, f_proj (D -> H, with bias); norm_weight (H d_v); out_proj (H d_v -> D, no bias):
    2 D H d_k + 3 D H d_v + 2 H (D + 1) + H d_v, i.e. 4 D^2 + 2 H (D + 1) + D at the defaults.
    """

    modes = ("recurrent", "parallel", "chunk")

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        qk_dim_factor: float = 0.5,
        v_dim_factor: float = 1.0,
        chunk_size: int = 64,
        negative_eigenvalues: bool = False,
        gate_soft_cap: float | None = None,
        norm_eps: float = 1e-6,
        mode: str = "auto",
        compute_dtype: str = "float32",
    ) -> None:
        super().__init__(d_model, mode)
        self.n_heads = positive_int("n_heads", n_heads)
        self.d_k = head_width("qk_dim_factor", d_model, qk_dim_factor, n_heads)
        self.d_v = head_width("v_dim_factor", d_model, v_dim_factor, n_heads)
        self.chunk_size = positive_int("chunk_size", chunk_size)
        self.compute_dtype = check_compute_dtype(compute_dtype)
        self.negative_eigenvalues = flag("negative_eigenvalues", negative_eigenvalues)
        self.gate_soft_cap = (
            None if gate_soft_cap is None else positive_number("gate_soft_cap", gate_soft_cap)
        )
        self.norm_eps = positive_number("norm_eps", norm_eps)
        qk, vv = n_heads * self.d_k, n_heads * self.d_v
        self.q_proj = nn.Linear(d_model, qk, bias=False)
        self.k_proj = nn.Linear(d_model, qk, bias=False)
        self.v_proj = nn.Linear(d_model, vv, bias=False)
        self.o_proj = nn.Linear(d_model, vv, bias=False)
        self.i_proj = nn.Linear(d_model, n_heads)
        self.f_proj = nn.Linear(d_model, n_heads)
        self.norm_weight = nn.Parameter(torch.ones(vv))
        self.out_proj = nn.Linear(vv, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # the xlstm package's mLSTM init: "small init" N(0, 2 / (5 D)) for the projections,
        # gates that start data-independent with forget biases spread over 3..6 (f ~ 0.95-0.998)
        std = math.sqrt(2.0 / (5.0 * self.d_model))
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.o_proj, self.out_proj):
            nn.init.normal_(proj.weight, std=std)
        nn.init.zeros_(self.i_proj.weight)
        nn.init.normal_(self.i_proj.bias, std=0.1)
        nn.init.zeros_(self.f_proj.weight)
        with torch.no_grad():
            self.f_proj.bias.copy_(torch.linspace(3.0, 6.0, self.n_heads))
        nn.init.ones_(self.norm_weight)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, d_k={self.d_k}, d_v={self.d_v}, "
            f"chunk_size={self.chunk_size}, negative_eigenvalues={self.negative_eigenvalues}, "
            f"gate_soft_cap={self.gate_soft_cap}, mode={self.mode!r}, "
            f"compute_dtype={self.compute_dtype!r}"
        )

    def auto_mode(self, seq_len: int) -> str:
        # measured (docs/models/mlstm.md, D512 B8, 1 thread): one token: recurrent 1.3 ms,
        # parallel 2.0, chunk 2.2; up to one chunk the parallel form is the chunk form
        # without its loops (T=16: 10 vs 13 ms); beyond, chunk (T=1024: 0.9 s vs 2.6 s)
        if seq_len <= 1:
            return "recurrent"
        return "parallel" if seq_len <= self.chunk_size else "chunk"

    # ------------------------------------------------------------- pieces
    def _gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """log i, log|f| and sign f (or None), each (..., H), from x (..., D)."""
        i_pre, f_pre = self.i_proj(x), self.f_proj(x)
        if self.gate_soft_cap is not None:
            cap = self.gate_soft_cap
            i_pre, f_pre = cap * torch.tanh(i_pre / cap), cap * torch.tanh(f_pre / cap)
        if self.negative_eigenvalues:
            log_f, sign = signed_log_forget(f_pre)
            return i_pre, log_f, sign
        return i_pre, F.logsigmoid(f_pre), None

    def _readout(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """y = W_out (sigmoid(W_o x) * norm(h)); x (..., D), h (..., H, d_v)."""
        lead = h.shape[:-2]
        normed = F.group_norm(
            h.reshape(-1, self.n_heads * self.d_v), self.n_heads, None, None, self.norm_eps
        )
        normed = normed.view(*lead, -1) * self.norm_weight
        return self.out_proj(torch.sigmoid(self.o_proj(x)) * normed)

    # ------------------------------------------------------------ contract
    def _forward(
        self, x: torch.Tensor, state: dict, mask: torch.Tensor | None, mode: str
    ) -> tuple[torch.Tensor, dict]:
        batch, seq_len, _ = x.shape
        if seq_len == 0:
            return x.new_zeros(x.shape), state

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, H*w) -> (B, H, T, w)
            return t.view(batch, seq_len, self.n_heads, -1).transpose(1, 2)

        q = heads(self.q_proj(x))
        k = heads(self.k_proj(x)) * self.d_k**-0.5
        v = heads(self.v_proj(x))
        log_i, log_f, sign = (None if t is None else t.transpose(1, 2) for t in self._gates(x))
        if mask is not None:
            keep = mask.unsqueeze(1)  # (B, 1, T)
            log_i = log_i.masked_fill(~keep, float("-inf"))
            log_f = log_f.masked_fill(~keep, 0.0)
            if sign is not None:
                sign = sign.masked_fill(~keep, 1.0)
        h, (c, n, m) = mlstm(
            q,
            k,
            v,
            log_i,
            log_f,
            (state["C"], state["n"], state["m"]),
            sign,
            mode,
            self.chunk_size,
            self.compute_dtype,
        )
        y = self._readout(x, h.transpose(1, 2))
        return y, {"C": c, "n": n, "m": m}

    def _step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        batch = x_t.shape[0]
        q = self.q_proj(x_t).view(batch, self.n_heads, self.d_k)
        k = self.k_proj(x_t).view(batch, self.n_heads, self.d_k) * self.d_k**-0.5
        v = self.v_proj(x_t).view(batch, self.n_heads, self.d_v)
        log_i, log_f, sign = self._gates(x_t)
        h, (c, n, m) = mlstm_step(q, k, v, log_i, log_f, (state["C"], state["n"], state["m"]), sign)
        return self._readout(x_t, h), {"C": c, "n": n, "m": m}

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict:
        c, n, m = zero_state(batch_size, self.n_heads, self.d_k, self.d_v, device, dtype)
        return {"C": c, "n": n, "m": m}
