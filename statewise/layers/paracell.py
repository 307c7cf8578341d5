"""ParaGRU and ParaLSTM (Danieli et al. 2025, "ParaRNN: Unlocking Parallel Training of
Nonlinear RNNs for Large Language Models"): GRU and LSTM cells whose recurrent weights are
diagonal, so that the cell's Jacobian in its state is diagonal (GRU) or a 2x2 block per unit
(LSTM's (c, h)), and Newton's method can solve the whole sequence in parallel.

ParaGRU, with g = W x_t + b split into (g_z, g_r, g_n) and diagonal recurrent weights
a = (a_z, a_r, a_n), each (H,):

    z_t = sigmoid(a_z * h_{t-1} + g_z)
    r_t = sigmoid(a_r * h_{t-1} + g_r)
    n_t = tanh(a_n * (r_t * h_{t-1}) + g_n)
    h_t = (1 - z_t) * h_{t-1} + z_t * n_t

ParaLSTM (coupled input and forget gate, peepholes p = (p_f, p_o) on the cell), with
g = W x_t + b split into (g_f, g_c, g_o) and a = (a_f, a_c, a_o):

    f_t  = sigmoid(a_f * h_{t-1} + p_f * c_{t-1} + g_f)
    c~_t = tanh(a_c * h_{t-1} + g_c)
    c_t  = f_t * c_{t-1} + (1 - f_t) * c~_t
    o_t  = sigmoid(a_o * h_{t-1} + p_o * c_t + g_o)
    h_t  = o_t * tanh(c_t)

y_t = W_out h_t when d_hidden != d_model, else y_t = h_t. The input projection of all T
steps is one GEMM; only the elementwise cell is recurrent.

Modes: "loop" (the cell stepped over time, autograd through the loop) and "newton"
(:func:`statewise.ops.newton.newton_recurrence`: Newton over the whole sequence, each
iteration one diagonal linear recurrence; backward one adjoint solve at the solution).
Masked steps carry the state through unchanged in both. auto mode is "loop": measured on
this machine (docs/newton.md), Newton trains 1.2-2.8x slower at d_model 256, B 4-16, and
4-14x faster only at a small batch x width (B 1, d_model 64).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from statewise.layers.base import SequenceMixer
from statewise.layers.mingru import hidden_width
from statewise.layers.registry import register
from statewise.ops.newton import (
    newton_options,
    newton_recurrence,
    sequential_recurrence,
)
from statewise.ops.tree import State


def paragru_cell(h: Tensor, g: Tensor, a: Tensor) -> Tensor:
    """One ParaGRU step for any leading dims: h (..., H), g (..., 3, H), a (3, H)."""
    g_z, g_r, g_n = g.unbind(-2)
    a_z, a_r, a_n = a
    z = torch.sigmoid(a_z * h + g_z)
    r = torch.sigmoid(a_r * h + g_r)
    n = torch.tanh(a_n * (r * h) + g_n)
    return h + z * (n - h)


def paragru_jacobian(h: Tensor, g: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
    """(h_t, dh_t/dh_{t-1}) of :func:`paragru_cell`; the Jacobian is diagonal::

    dz = a_z z (1 - z),  dr = a_r r (1 - r),  dn = (1 - n^2) a_n (r + h dr)
    J  = (1 - z) + (n - h) dz + z dn
    """
    g_z, g_r, g_n = g.unbind(-2)
    a_z, a_r, a_n = a
    z = torch.sigmoid(a_z * h + g_z)
    r = torch.sigmoid(a_r * h + g_r)
    n = torch.tanh(a_n * (r * h) + g_n)
    dz = a_z * z * (1 - z)
    dr = a_r * r * (1 - r)
    dn = (1 - n * n) * a_n * (r + h * dr)
    return h + z * (n - h), (1 - z) + (n - h) * dz + z * dn


def paralstm_cell(s: Tensor, g: Tensor, a: Tensor, p: Tensor) -> Tensor:
    """One ParaLSTM step: s (..., H, 2) = (c, h) per unit, g (..., 3, H), a (3, H), p (2, H)."""
    c, h = s.unbind(-1)
    g_f, g_c, g_o = g.unbind(-2)
    a_f, a_c, a_o = a
    p_f, p_o = p
    f = torch.sigmoid(a_f * h + p_f * c + g_f)
    c_tilde = torch.tanh(a_c * h + g_c)
    c_new = c_tilde + f * (c - c_tilde)
    o = torch.sigmoid(a_o * h + p_o * c_new + g_o)
    return torch.stack([c_new, o * torch.tanh(c_new)], dim=-1)


def paralstm_jacobian(s: Tensor, g: Tensor, a: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """(s_t, ds_t/ds_{t-1}) of :func:`paralstm_cell`; J (..., H, 2, 2) with rows and columns
    (c, h), J[..., i, j] = d s_i / d s_j (prev)::

    df = f (1 - f) (p_f, a_f)                  dc~ = (0, a_c (1 - c~^2))
    dc = f e_c + (c - c~) df + (1 - f) dc~     (e_c = (1, 0))
    do = o (1 - o) ((0, a_o) + p_o dc)
    dh = tanh(c_t) do + o (1 - tanh(c_t)^2) dc
    """
    c, h = s.unbind(-1)
    g_f, g_c, g_o = g.unbind(-2)
    a_f, a_c, a_o = a
    p_f, p_o = p
    f = torch.sigmoid(a_f * h + p_f * c + g_f)
    c_tilde = torch.tanh(a_c * h + g_c)
    c_new = c_tilde + f * (c - c_tilde)
    o = torch.sigmoid(a_o * h + p_o * c_new + g_o)
    tanh_c = torch.tanh(c_new)
    h_new = o * tanh_c
    f_slope, o_slope = f * (1 - f), o * (1 - o)
    dc_dc = f + (c - c_tilde) * f_slope * p_f
    dc_dh = (c - c_tilde) * f_slope * a_f + (1 - f) * (1 - c_tilde * c_tilde) * a_c
    dtanh = o * (1 - tanh_c * tanh_c)
    dh_dc = tanh_c * o_slope * p_o * dc_dc + dtanh * dc_dc
    dh_dh = tanh_c * o_slope * (a_o + p_o * dc_dh) + dtanh * dc_dh
    jac = torch.stack([torch.stack([dc_dc, dc_dh], -1), torch.stack([dh_dc, dh_dh], -1)], -2)
    return torch.stack([c_new, h_new], dim=-1), jac


class ParaCell(SequenceMixer):
    """What ParaGRU and ParaLSTM share: the input projection D -> 3 d_hidden (with bias),
    diagonal recurrent weights ``recurrent`` (3, d_hidden), the optional output projection,
    the two modes and the Newton options.

    Subclasses set ``block`` (1: diagonal Jacobian; 2: (c, h) blocks), ``cell`` (and
    ``cell_jacobian`` when written out) and the state packing.
    """

    modes = ("loop", "newton")
    block = 1

    def __init__(
        self,
        d_model: int,
        expand: float = 1.0,
        d_hidden: int | None = None,
        iterations: int | None = None,
        tol: float | None = None,
        max_iterations: int | None = None,
        jacobian_clip: float | None = None,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        self.d_hidden = hidden_width(d_model, expand, d_hidden)
        self.newton = newton_options(iterations, tol, max_iterations, jacobian_clip, self.block)
        self.in_proj = nn.Linear(d_model, 3 * self.d_hidden)
        # diagonal recurrent weights, U(-1, 1): |a| <= 1 keeps the gates responsive to h
        self.recurrent = nn.Parameter(torch.empty(3, self.d_hidden).uniform_(-1.0, 1.0))
        self.out_proj = (
            nn.Linear(self.d_hidden, d_model, bias=False) if self.d_hidden != d_model else None
        )

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_hidden={self.d_hidden}, mode={self.mode!r}"

    def auto_mode(self, seq_len: int) -> str:
        # measured (docs/newton.md): the loop wins at batch x width >= 1024 numbers per step
        # (Newton 1.2-2.8x slower to train at d_model 256, B 4-16); Newton wins only at a
        # small batch x width, which auto_mode (it sees only T) cannot tell apart
        return "loop"

    # set by subclasses: the cell f(s, g, *params), and (f, J) written out if available
    cell: Callable[..., Tensor]
    cell_jacobian: Callable[..., tuple[Tensor, Tensor]] | None = None

    def _cell_params(self) -> tuple[Tensor, ...]:
        return (self.recurrent,)

    def _pack(self, state: State) -> Tensor:
        return state

    def _unpack(self, s: Tensor) -> State:
        return s.clone()  # not a view of the whole trajectory

    def _output(self, s: Tensor) -> Tensor:
        return s

    def _readout(self, s: Tensor) -> Tensor:
        h = self._output(s)
        return self.out_proj(h) if self.out_proj is not None else h

    def _forward(
        self, x: Tensor, state: State, mask: Tensor | None, mode: str
    ) -> tuple[Tensor, State]:
        if x.shape[1] == 0:
            return x.new_zeros(x.shape), state
        g = self.in_proj(x).unflatten(-1, (3, self.d_hidden))
        s0, params = self._pack(state), self._cell_params()
        if mode == "newton":
            s = newton_recurrence(
                self.cell, s0, (g,), params, mask, self.cell_jacobian, self.newton
            )
        else:
            s = sequential_recurrence(self.cell, s0, (g,), params, mask)
        return self._readout(s), self._unpack(s[:, -1])

    def _step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        g = self.in_proj(x_t).unflatten(-1, (3, self.d_hidden))
        s = self.cell(self._pack(state), g, *self._cell_params())
        return self._readout(s), self._unpack(s)


@register(
    "paragru",
    family="nonlinear, diagonal recurrence",
    paper="Danieli et al. 2025, ParaRNN: Unlocking Parallel Training of Nonlinear RNNs",
    state_size="d",
)
class ParaGRU(ParaCell):
    """ParaGRU: a GRU with diagonal recurrent weights, trainable by Newton in parallel.

    Args:
        d_model: input and output width D.
        expand: d_hidden = round(expand * d_model) when ``d_hidden`` is not given.
        d_hidden: width of the state; overrides ``expand``.
        iterations: Newton mode: a fixed number of iterations (ParaRNN uses 3), or
        tol: stop when max |h^{k+1} - h^k| <= tol (default 1e-12 in float64, 1e-5 in
            float32), after at most ``max_iterations`` (default min(T, 32)); when not
            met, the sequential loop computes the answer instead.
        jacobian_clip: clip the Jacobian to [-clip, clip] in Newton's linearisation
            (a damped, quasi-Newton step for cells whose iterations diverge).
        mode: "auto" (= "loop", measured), "loop" or "newton".

    State: h (B, d_hidden). Parameters: ``in_proj`` (Linear D -> 3 d_hidden, rows z, r, n),
    ``recurrent`` (3, d_hidden: a_z, a_r, a_n), ``out_proj`` (only when d_hidden != D).
    """

    cell = staticmethod(paragru_cell)
    cell_jacobian = staticmethod(paragru_jacobian)

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        return torch.zeros(batch_size, self.d_hidden, device=device, dtype=dtype)


@register(
    "paralstm",
    family="nonlinear, diagonal recurrence",
    paper="Danieli et al. 2025, ParaRNN: Unlocking Parallel Training of Nonlinear RNNs",
    state_size="2 * d",
)
class ParaLSTM(ParaCell):
    """ParaLSTM: a coupled-gate LSTM with diagonal recurrent and peephole weights; its
    Jacobian in (c, h) is a 2x2 block per unit (Newton's linear solves are block-wise).

    Args: as :class:`ParaGRU`.

    State: (h, c), each (B, d_hidden). Parameters: ``in_proj`` (Linear D -> 3 d_hidden, rows
    f, c~, o), ``recurrent`` (3, d_hidden: a_f, a_c, a_o), ``peephole`` (2, d_hidden: p_f,
    p_o), ``out_proj`` (only when d_hidden != D).
    """

    block = 2
    cell = staticmethod(paralstm_cell)
    cell_jacobian = staticmethod(paralstm_jacobian)

    def __init__(self, d_model: int, **kwargs) -> None:
        super().__init__(d_model, **kwargs)
        self.peephole = nn.Parameter(torch.empty(2, self.d_hidden).uniform_(-1.0, 1.0))

    def _cell_params(self) -> tuple[Tensor, ...]:
        return (self.recurrent, self.peephole)

    def _pack(self, state: State) -> Tensor:
        h, c = state
        return torch.stack([c, h], dim=-1)

    def _unpack(self, s: Tensor) -> State:
        return s[..., 1].clone(), s[..., 0].clone()

    def _output(self, s: Tensor) -> Tensor:
        return s[..., 1]

    def _init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        zeros = torch.zeros(batch_size, self.d_hidden, device=device, dtype=dtype)
        return zeros, zeros.clone()
