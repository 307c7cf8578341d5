"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?").

    z_t = sigmoid(W_z x_t + b_z)                 update gate, (B, d_hidden)
    h~_t = W_h x_t + b_h                         candidate, no tanh and no reset gate
    h_t = (1 - z_t) * h_{t-1} + z_t * h~_t       a diagonal linear recurrence in h
    y_t = W_o h_t                                only when d_hidden != d_model

Neither gate depends on h_{t-1}, so the recurrence is h_t = a_t h_{t-1} + b_t with
a_t = 1 - z_t = sigmoid(-(W_z x_t + b_z)) and b_t = z_t h~_t, run by
:func:`statewise.ops.scan.linear_recurrence` either as a loop over time ("recurrent") or
as a parallel doubling scan ("scan").

Negative eigenvalues (Grazzi et al. 2025, ``negative_eigenvalues=True``): the transition
a_t = 1 - z_t in (0, 1) becomes 2 a_t - 1 = tanh(-(W_z x_t + b_z) / 2) in (-1, 1); the input
term z_t h~_t is unchanged. With a sign-flipping transition the cell can track parity.

Output projection: the paper's minGRU outputs h_t itself; a projection back to d_model is
needed only when the hidden width differs. So W_o exists only when d_hidden != d_model
(as in the minGRU-pytorch peer); at expand = 1 the layer is exactly the paper's cell and
the surrounding block's projections do the mixing.

Masked steps (mask False) use a_t = 1, b_t = 0: the state passes through unchanged.

This module also holds what minGRU shares with the other diagonal linear mixers
(minLSTM, HGRN, LRU): :class:`DiagonalLinearMixer` runs any h_t = a_t h_{t-1} + b_t layer
given its coefficients and its readout, and :class:`MinRNN` is the common part of minGRU
and minLSTM (gated input projection, optional output projection).

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
from statewise.layers.checks import flag, positive_int, positive_number
from statewise.layers.registry import register
from statewise.ops.scan import linear_recurrence
from statewise.ops.tree import State

# layer mode -> the form of ops.scan.linear_recurrence
_FORMS = {"recurrent": "loop", "scan": "scan"}


def hidden_width(d_model: int, expand: float, d_hidden: int | None) -> int:
    """``d_hidden`` if given, else round(expand * d_model); ValueError naming a bad argument."""
    if d_hidden is None:
        return max(1, round(positive_number("expand", expand) * d_model))
    return positive_int("d_hidden", d_hidden)


def skip_masked(
    a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """a = 1 and b = 0 where ``mask`` (B, T) is False, so the state passes through unchanged."""
    if mask is None:
        return a, b
    keep = mask.unsqueeze(-1)
    return torch.where(keep, a, torch.ones_like(a)), torch.where(keep, b, torch.zeros_like(b))


class DiagonalLinearMixer(SequenceMixer):
    """A mixer whose whole recurrence is the elementwise h_t = a_t * h_{t-1} + b_t.

    Subclasses define:
        _coefficients(x) -> (a, b) for x (..., D) with any leading dims; ``a`` broadcasts
            to ``b`` (..., *state dims); ``b`` may be complex.
        _readout(h, x) -> y (..., D) from the states h_t and the inputs x_t.
        _init_state(batch, device, dtype).
    and, when the state is stored in another form than h (LRU keeps a complex h as real
    pairs), ``_state_to_h`` and ``_h_to_state``.

    Modes: "recurrent" (the loop of ops.scan, with its hand-written backward) and "scan"
    (the doubling scan); auto picks "recurrent" (measurements in docs/models/mingru.md).
    """

    modes = ("recurrent", "scan")

    def auto_mode(self, seq_len: int) -> str:
        return "recurrent"

    def _coefficients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _readout(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _state_to_h(self, state: State) -> torch.Tensor:
        return state

    def _h_to_state(self, h: torch.Tensor) -> State:
        return h

    def _forward(
        self, x: torch.Tensor, state: State, mask: torch.Tensor | None, mode: str
    ) -> tuple[torch.Tensor, State]:
        if x.shape[1] == 0:
            return x.new_zeros(x.shape), state
        a, b = skip_masked(*self._coefficients(x), mask)
        h = linear_recurrence(a, b, self._state_to_h(state), mode=_FORMS[mode])
        return self._readout(h, x), self._h_to_state(h[:, -1].clone())  # not a view of all h

    def _step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        a, b = self._coefficients(x_t)
        h = torch.addcmul(b, a, self._state_to_h(state))
        return self._readout(h, x_t), self._h_to_state(h)


class MinRNN(DiagonalLinearMixer):
    """What minGRU and minLSTM share: one input projection D -> n_parts * d_hidden (with
    bias) into gate pre-activations and the candidate h~ (last part), the state h
    (B, d_hidden), and ``out_proj`` (d_hidden -> D, no bias) only when d_hidden != D.

    Subclasses set ``n_parts`` and implement ``_gates(parts) -> (a, b)``.
    """

    n_parts: int = 2

    def __init__(
        self,
        d_model: int,
        expand: float = 1.0,
        d_hidden: int | None = None,
        negative_eigenvalues: bool = False,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        self.d_hidden = hidden_width(d_model, expand, d_hidden)
        self.negative_eigenvalues = flag("negative_eigenvalues", negative_eigenvalues)
        self.to_gate_hidden = nn.Linear(d_model, self.n_parts * self.d_hidden)
        self.out_proj = (
            nn.Linear(self.d_hidden, d_model, bias=False) if self.d_hidden != d_model else None
        )

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_hidden={self.d_hidden}, "
            f"negative_eigenvalues={self.negative_eigenvalues}, mode={self.mode!r}"
        )

    def _gates(self, parts: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _coefficients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._gates(self.to_gate_hidden(x).chunk(self.n_parts, dim=-1))

    def _readout(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(h) if self.out_proj is not None else h

    def _init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        return torch.zeros(batch_size, self.d_hidden, device=device, dtype=dtype)


@register(
    "mingru",
    family="diagonal linear",
    paper="Feng et al. 2024, Were RNNs All We Needed?",
    state_size="d",
)
class MinGRU(MinRNN):
    """minGRU: a GRU whose gates read only the input, so it trains by a linear recurrence.

    Args:
        d_model: input and output width D.
        expand: d_hidden = round(expand * d_model) when ``d_hidden`` is not given.
        d_hidden: width of the recurrent state; overrides ``expand``.
        negative_eigenvalues: use the transition 2 (1 - z_t) - 1 in (-1, 1) instead of
            1 - z_t in (0, 1) (Grazzi et al. 2025).
        mode: "auto" (= "recurrent", see the module docstring), "recurrent" or "scan".

    State: h, a tensor (B, d_hidden). Parameters: ``to_gate_hidden`` (a Linear D -> 2
    d_hidden with bias, its output split into the gate pre-activation and the candidate)
    and ``out_proj`` (Linear d_hidden -> D without bias, or None when d_hidden == D).
    """

    n_parts = 2

    def _gates(self, parts: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """a_t = 1 - z_t (or 2 (1 - z_t) - 1) and b_t = z_t * h~_t."""
        gate, candidate = parts
        if self.negative_eigenvalues:
            a = torch.tanh(-0.5 * gate)  # 2 sigmoid(-gate) - 1, without the cancellation
        else:
            a = torch.sigmoid(-gate)  # 1 - sigmoid(gate), without the cancellation
        return a, torch.sigmoid(gate) * candidate
