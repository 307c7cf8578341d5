"""The classic nonlinear cells (LSTM, GRU, Elman RNN): one time step, and a loop over time.

The equations, weight layouts and gate orders are torch.nn's, so weights copied from
``torch.nn.LSTM``/``GRU``/``RNN`` (or their ``*Cell`` versions) mean the same thing here.
With ``x`` the input (width I), ``h`` the hidden state (width H, or P with an LSTM
projection) and ``W_i* / W_h* / b_i* / b_h*`` the row blocks of ``weight_ih`` (G, I),
``weight_hh`` (G, H), ``bias_ih`` (G,) and ``bias_hh`` (G,), in that order:

LSTM (G = 4H, gates i, f, g, o)::

    i  = sigmoid(W_ii x + b_ii + W_hi h + b_hi)
    f  = sigmoid(W_if x + b_if + W_hf h + b_hf)
    g  = tanh   (W_ig x + b_ig + W_hg h + b_hg)
    o  = sigmoid(W_io x + b_io + W_ho h + b_ho)
    c' = f * c + i * g
    h' = o * tanh(c')                      # then h' = W_hr h' with a projection (P, H)

GRU (G = 3H, gates r, z, n)::

    r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n  = tanh   (W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

Elman RNN (G = H)::

    h' = act(W_ih x + b_ih + W_hh h + b_hh)     # act = tanh or relu

A sequence runs as ONE matmul for the input projection of all T steps, then a loop over
time for the recurrence (the only sequential part). Every function here is pure: weights
come in as tensors, nothing is stored.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from statewise.ops.tree import State, carry

Cell = Literal["lstm", "gru", "rnn_tanh", "rnn_relu"]

#: rows of ``weight_ih`` / ``weight_hh`` per unit of hidden size
GATES: dict[str, int] = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


class CellWeights(NamedTuple):
    """The weights of one cell (one layer, one direction), in torch.nn's shapes.

    weight_ih (G, I), weight_hh (G, P), bias_ih (G,), bias_hh (G,), weight_hr (P, H) where
    G = GATES[cell] * H and P = H unless an LSTM projection (``weight_hr``) is given.
    """

    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None = None
    bias_hh: Tensor | None = None
    weight_hr: Tensor | None = None


def check_cell(cell: str) -> None:
    """Raise ValueError unless ``cell`` is one of the cells here."""
    if cell not in GATES:
        raise ValueError(f"cell must be one of {tuple(GATES)}, got {cell!r}")


def _check_weights(cell: str, w: CellWeights) -> None:
    check_cell(cell)
    if w.weight_hr is not None and cell != "lstm":
        raise ValueError(f"weight_hr (a projection) exists only for the lstm cell, not {cell!r}")


# ------------------------------------------------------------------ one step


def _recurrent_term(gi: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor | None) -> Tensor:
    """``gi + h W_hh^T (+ b_hh)``, as one fused addmm when it can be."""
    out = torch.addmm(gi, h, weight_hh.t()) if gi.dim() == 2 else gi + h @ weight_hh.t()
    return out if bias_hh is None else out + bias_hh


def lstm_step(
    gi: Tensor,
    state: tuple[Tensor, Tensor],
    weight_hh: Tensor,
    bias_hh: Tensor | None = None,
    weight_hr: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One LSTM step from the projected input ``gi = W_ih x + b_ih`` (B, 4H).

    state = (h (B, P), c (B, H)); returns (h', c') with::

        i, f, g, o = split(gi + W_hh h + b_hh)      # torch.nn's gate order
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(o) * tanh(c')                  # h' = W_hr h' if weight_hr is given
    """
    h, c = state
    gates = _recurrent_term(gi, h, weight_hh, bias_hh)
    i, f, g, o = gates.chunk(4, dim=-1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    if weight_hr is not None:
        h_new = h_new @ weight_hr.t()
    return h_new, c_new


def gru_step(gi: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor | None = None) -> Tensor:
    """One GRU step from the projected input ``gi = W_ih x + b_ih`` (B, 3H); returns h'::

    gh = W_hh h + b_hh                         # (B, 3H), blocks r, z, n
    r = sigmoid(gi_r + gh_r);  z = sigmoid(gi_z + gh_z)
    n = tanh(gi_n + r * gh_n)
    h' = (1 - z) * n + z * h
    """
    gh = h @ weight_hh.t() if bias_hh is None else torch.addmm(bias_hh, h, weight_hh.t())
    hidden = h.shape[-1]
    rz = torch.sigmoid(gi[..., : 2 * hidden] + gh[..., : 2 * hidden])
    r, z = rz.chunk(2, dim=-1)
    n = torch.tanh(gi[..., 2 * hidden :] + r * gh[..., 2 * hidden :])
    return n + z * (h - n)


def elman_step(
    gi: Tensor,
    h: Tensor,
    weight_hh: Tensor,
    bias_hh: Tensor | None = None,
    nonlinearity: Literal["tanh", "relu"] = "tanh",
) -> Tensor:
    """One Elman RNN step from the projected input ``gi = W_ih x + b_ih`` (B, H)::

    h' = act(gi + W_hh h + b_hh),  act = tanh or relu
    """
    pre = _recurrent_term(gi, h, weight_hh, bias_hh)
    if nonlinearity == "tanh":
        return torch.tanh(pre)
    if nonlinearity == "relu":
        return torch.relu(pre)
    raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")


def input_projection(x: Tensor, weight_ih: Tensor, bias_ih: Tensor | None = None) -> Tensor:
    """``x W_ih^T + b_ih`` over any leading dims: (..., I) -> (..., G), one matmul."""
    out = x @ weight_ih.t()
    return out if bias_ih is None else out + bias_ih


def recurrence_step(
    cell: Cell,
    gi: Tensor,
    state: State,
    weight_hh: Tensor,
    bias_hh: Tensor | None = None,
    weight_hr: Tensor | None = None,
) -> State:
    """The recurrent half of one step of ``cell``, given its projected input ``gi``."""
    if cell == "lstm":
        return lstm_step(gi, state, weight_hh, bias_hh, weight_hr)
    if cell == "gru":
        return gru_step(gi, state, weight_hh, bias_hh)
    if cell in ("rnn_tanh", "rnn_relu"):
        return elman_step(gi, state, weight_hh, bias_hh, nonlinearity=cell[4:])
    check_cell(cell)
    raise AssertionError  # unreachable


def cell_step(cell: Cell, x_t: Tensor, state: State, w: CellWeights) -> State:
    """One whole step of ``cell``: x_t (B, I), state -> new state (see the module docstring)."""
    _check_weights(cell, w)
    gi = input_projection(x_t, w.weight_ih, w.bias_ih)
    return recurrence_step(cell, gi, state, w.weight_hh, w.bias_hh, w.weight_hr)


def cell_output(cell: Cell, state: State) -> Tensor:
    """The output h of a cell's state: ``state[0]`` for the lstm's (h, c), else the state."""
    return state[0] if cell == "lstm" else state


# -------------------------------------------------------------- a sequence


def run_cell(
    cell: Cell,
    x: Tensor,
    state: State,
    w: CellWeights,
    mask: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, State]:
    """Run ``cell`` over a batch-first sequence x (B, T, I) from ``state``.

    Returns (y, final_state) with y (B, T, P): the output h of every step. The input
    projection of all T steps is one matmul; then a loop over time applies the recurrence.
    ``mask`` (B, T) bool, True = real token: at a masked step the state is carried through
    unchanged (and y there is the carried h). ``reverse=True`` runs from t = T-1 down to 0,
    as the backward direction of a bidirectional layer does; y keeps the input's time order.
    """
    _check_weights(cell, w)
    batch, seq_len, _ = x.shape
    if seq_len == 0:
        width = cell_output(cell, state).shape[-1]
        return x.new_empty(batch, 0, width), state
    bias_ih, bias_hh = w.bias_ih, w.bias_hh
    if cell != "gru" and bias_ih is not None and bias_hh is not None:
        # b_hh sits outside any gate product here, so it joins b_ih in the one big matmul
        bias_ih, bias_hh = bias_ih + bias_hh, None
    gis = input_projection(x, w.weight_ih, bias_ih).unbind(1)
    keeps = mask.unbind(1) if mask is not None else None
    steps = range(seq_len - 1, -1, -1) if reverse else range(seq_len)
    ys: list[Tensor] = []
    for t in steps:
        new = recurrence_step(cell, gis[t], state, w.weight_hh, bias_hh, w.weight_hr)
        state = new if keeps is None else carry(keeps[t], new, state)
        ys.append(cell_output(cell, state))
    if reverse:
        ys.reverse()
    return torch.stack(ys, dim=1), state
