"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?").

    z_t = sigmoid(W_z x_t + b_z)                 update gate, (B, d_hidden)
    h~_t = W_h x_t + b_h                         candidate, no tanh and no reset gate
    h_t = (1 - z_t) * h_{t-1} + z_t * h~_t       a diagonal linear recurrence in h
    y_t = W_o h_t                                only when d_hidden != d_model

Neither gate depends on h_{t-1}, so the recurrence is h_t = a_t h_{t-1} + b_t with
a_t = 1 - z_t = sigmoid(-(W_z x_t + b_z)) and b_t = z_t h~_t, run by
:func:`statewise.ops.scan.linear_recurrence` either as a loop over time ("recurrent") or
as a parallel doubling scan ("scan").

Output projection: the paper's minGRU outputs h_t itself; a projection back to d_model is
needed only when the hidden width differs. So W_o exists only when d_hidden != d_model
(as in the minGRU-pytorch peer); at expand = 1 the layer is exactly the paper's cell and
the surrounding block's projections do the mixing.

Masked steps (mask False) use a_t = 1, b_t = 0: the state passes through unchanged.

auto mode is "recurrent": measured on this machine (2 cores, torch 2.13, fp32, forward +
backward of the recurrence alone), the loop beats the Hillis-Steele scan whenever
batch x d_hidden >= ~256, e.g. 7 ms vs 59 ms at B8 T256 D512, 30 ms vs 377 ms at
B8 T1024 D512, 129 ms vs 4.8 s at B8 T4096 D512; the scan wins only for tiny widths
(B1 D64 T1024: 13 ms vs 5 ms), where both are cheap. See docs/models/mingru.md.
"""

from __future__ import annotations

import torch
from torch import nn

from statewise.layers.base import SequenceMixer
from statewise.layers.registry import register
from statewise.ops.scan import linear_recurrence

# layer mode -> the form of ops.scan.linear_recurrence
_FORMS = {"recurrent": "loop", "scan": "scan"}


@register(
    "mingru",
    family="diagonal linear",
    paper="Feng et al. 2024, Were RNNs All We Needed?",
    state_size="d",
)
class MinGRU(SequenceMixer):
    """minGRU: a GRU whose gates read only the input, so it trains by a linear recurrence.

    Args:
        d_model: input and output width D.
        expand: d_hidden = round(expand * d_model) when ``d_hidden`` is not given.
        d_hidden: width of the recurrent state; overrides ``expand``.
        mode: "auto" (= "recurrent", see the module docstring), "recurrent" or "scan".

    State: h, a tensor (B, d_hidden). Parameters: ``to_gate_hidden`` (a Linear D -> 2
    d_hidden with bias, its output split into the gate pre-activation and the candidate)
    and ``out_proj`` (Linear d_hidden -> D without bias, or None when d_hidden == D).
    """

    modes = ("recurrent", "scan")

    def __init__(
        self,
        d_model: int,
        expand: float = 1.0,
        d_hidden: int | None = None,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        if d_hidden is None:
            if isinstance(expand, bool) or not isinstance(expand, (int, float)) or expand <= 0:
                raise ValueError(f"expand must be a positive number, got {expand!r}")
            d_hidden = max(1, round(expand * d_model))
        elif isinstance(d_hidden, bool) or not isinstance(d_hidden, int) or d_hidden <= 0:
            raise ValueError(f"d_hidden must be a positive int, got {d_hidden!r}")
        self.d_hidden = d_hidden
        self.to_gate_hidden = nn.Linear(d_model, 2 * d_hidden)
        self.out_proj = nn.Linear(d_hidden, d_model, bias=False) if d_hidden != d_model else None

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_hidden={self.d_hidden}, mode={self.mode!r}"

    def auto_mode(self, seq_len: int) -> str:
        return "recurrent"

    def _coefficients(
        self, x: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """a_t = 1 - z_t and b_t = z_t * h~_t, with a = 1, b = 0 at masked steps."""
        gate, candidate = self.to_gate_hidden(x).chunk(2, dim=-1)
        a = torch.sigmoid(-gate)  # 1 - sigmoid(gate), without the cancellation
        b = torch.sigmoid(gate) * candidate
        if mask is not None:
            keep = mask.unsqueeze(-1)
            a = torch.where(keep, a, torch.ones_like(a))
            b = torch.where(keep, b, torch.zeros_like(b))
        return a, b

    def _out(self, h: torch.Tensor) -> torch.Tensor:
        return self.out_proj(h) if self.out_proj is not None else h

    def _forward(
        self, x: torch.Tensor, state: torch.Tensor, mask: torch.Tensor | None, mode: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1] == 0:
            return x.new_zeros(x.shape), state
        a, b = self._coefficients(x, mask)
        h = linear_recurrence(a, b, state, mode=_FORMS[mode])
        return self._out(h), h[:, -1].clone()  # not a view that pins all of h

    def _step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self._coefficients(x_t, None)
        h = torch.addcmul(b, a, state)
        return self._out(h), h

    def _init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        return torch.zeros(batch_size, self.d_hidden, device=device, dtype=dtype)
