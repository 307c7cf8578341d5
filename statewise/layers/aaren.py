"""Aaren (Feng et al. 2024, "Attention as an RNN"): softmax attention of a learned query
over the prefix, computed as an RNN.

Per head h (H heads of width d = D / H), with a learned query q_h (not input dependent):

    k_t = (W_K x_t)_h,   v_t = (W_V x_t)_h,   s_t = q_h . k_t / sqrt(d)
    o_t = sum_{i<=t} softmax_i(s_1..s_t) v_i                 many-to-many attention
    y_t = W_O concat_h(o_t)

o_t is carried by the stabilised state (m, u, w) of :mod:`statewise.ops.softmax_scan`:
m_t = max(m_{t-1}, s_t), u_t = u_{t-1} e^{m_{t-1}-m_t} + e^{s_t-m_t},
w_t = w_{t-1} e^{m_{t-1}-m_t} + e^{s_t-m_t} v_t, o_t = w_t / u_t. The paper's parallel form
is a prefix scan of the associative operator on the elements (s_i, 1, v_i).

Modes:
- "recurrent": the running max by a cumulative max, then (u, w) by the loop over time of
  :func:`statewise.ops.scan.linear_recurrence`
  (:func:`statewise.ops.softmax_scan.softmax_scan_loop`).
- "scan": a Hillis-Steele doubling scan of the (m, u, w) operator
  (:func:`statewise.ops.softmax_scan.softmax_scan_parallel`), as in the paper.

The fresh state is the empty prefix (m, u, w) = (-inf, 0, 0); the output of an empty
prefix is 0 (not 0/0). Masked steps get s = -inf, the identity element: the state passes
through unchanged.

auto mode is "recurrent": measured on this machine (torch 2.13, fp32, one thread, process
CPU time because other jobs shared the 2 cores; the whole layer, projections included,
forward / forward + backward), ms:

    B8 D256 H4:  T=64: recurrent 4.8 / 12.5, scan 7.1 / 17.9;  T=256: 18 / 41 vs 25 / 61;
                 T=1024: 51 / 173 vs 96 / 349;  T=4096: 279 / 892 vs 714 / 2078
    B1 D64 H4:   T=256: 2.6 / 5.3 vs 2.4 / 5.8;  T=1024: 9.1 / 19.5 vs 5.9 / 14.8

The scan wins only at tiny widths, where both take milliseconds. At B8 D256 the three
projections take about half of the recurrent mode's time. See docs/models/aaren.md.
"""

from __future__ import annotations

import torch
from torch import nn

from statewise.errors import ArgumentError
from statewise.layers.base import SequenceMixer
from statewise.layers.checks import positive_int
from statewise.layers.registry import register
from statewise.ops.softmax_scan import softmax_combine, softmax_readout, softmax_scan

# layer mode -> the form of ops.softmax_scan.softmax_scan
_FORMS = {"recurrent": "loop", "scan": "scan"}


@register(
    "aaren",
    family="attention as RNN",
    paper="Feng et al. 2024, Attention as an RNN",
    state_size="d + 8",
)
class Aaren(SequenceMixer):
    """Aaren: multi-head softmax attention of a learned query over every prefix.

    Args:
        d_model: input and output width D.
        n_heads: number of heads H; must divide D.
        mode: "auto" (= "recurrent"), "recurrent" or "scan".

    State: {"m": (B, H) running max of the scores (-inf when empty), "u": (B, H) sum of
    e^{s_i - m}, "w": (B, H, D/H) sum of e^{s_i - m} v_i}; D + 2H floats.
    Parameters: query (H, D/H), k_proj, v_proj, out_proj (Linear D -> D, no bias):
    3 D^2 + D.
    """

    modes = ("recurrent", "scan")
    state_neg_inf = ("m",)  # the running max of an empty prefix is -inf

    def __init__(self, d_model: int, n_heads: int = 4, mode: str = "auto") -> None:
        super().__init__(d_model, mode)
        positive_int("n_heads", n_heads)
        if d_model % n_heads:
            raise ArgumentError(f"n_heads={n_heads} must divide d_model={d_model}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.query = nn.Parameter(torch.empty(n_heads, self.head_dim))
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.query)  # with unit-scale keys, scores start at about N(0, 1)
        for proj in (self.k_proj, self.v_proj, self.out_proj):
            proj.reset_parameters()

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, mode={self.mode!r}"

    def auto_mode(self, seq_len: int) -> str:
        return "recurrent"

    def _scores_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """s = q . k / sqrt(d): (..., H); v: (..., H, d) for x (..., D)."""
        k = self.k_proj(x).unflatten(-1, (self.n_heads, self.head_dim))
        v = self.v_proj(x).unflatten(-1, (self.n_heads, self.head_dim))
        return (k * self.query).sum(dim=-1) * self.head_dim**-0.5, v

    def _forward(
        self, x: torch.Tensor, state: dict, mask: torch.Tensor | None, mode: str
    ) -> tuple[torch.Tensor, dict]:
        if x.shape[1] == 0:
            return x.new_zeros(x.shape), state
        s, v = self._scores_values(x)
        if mask is not None:  # s = -inf is the identity element: the state passes through
            s = torch.where(mask.unsqueeze(-1), s, torch.full_like(s, float("-inf")))
        m, u, w = softmax_scan(s, v, (state["m"], state["u"], state["w"]), mode=_FORMS[mode])
        y = self.out_proj(softmax_readout(u, w).flatten(-2))
        return y, {"m": m[:, -1].clone(), "u": u[:, -1].clone(), "w": w[:, -1].clone()}

    def _step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        s, v = self._scores_values(x_t)
        m, u, w = softmax_combine((state["m"], state["u"], state["w"]), (s, torch.ones_like(s), v))
        return self.out_proj(softmax_readout(u, w).flatten(-2)), {"m": m, "u": u, "w": w}

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict:
        heads = (batch_size, self.n_heads)
        return {
            "m": torch.full(heads, float("-inf"), device=device, dtype=dtype),
            "u": torch.zeros(heads, device=device, dtype=dtype),
            "w": torch.zeros(*heads, self.head_dim, device=device, dtype=dtype),
        }
