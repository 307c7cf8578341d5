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

Head-wise cells (FlashRNN, Poeppel et al. 2024): with ``weight_hh`` of shape (K, G*d, d)
the recurrent matrix is block-diagonal, K heads of width d = H / K, and head k's G*d
pre-activations depend on its own d units only::

    pre[k] = gi[k] + W_hh[k] h[k] (+ b_hh[k])          # gi[k]: the G*d entries of head k

The gate vector is then laid out head by head (head, gate, unit): rows k*G*d .. (k+1)*G*d
of ``weight_ih`` and the biases belong to head k, gates in torch.nn's order inside. With
K = 1 this is torch.nn's layout, so a (G*H, H) ``weight_hh`` is the one-head case.

A sequence runs as ONE matmul for the input projection of all T steps, then the recurrence
over time (the only sequential part), by the first of these that applies:

1. ATen's fused sequence op (``torch.lstm``/``gru``/``rnn_tanh``/``rnn_relu``, what
   torch.nn's modules call) when there is one head and no mask;
2. the numba kernel of statewise.kernels.cells (backend "numba", CPU, float32/64);
3. the loop over time here (the twin of both; masks carry the state through).

Every function here is pure: weights come in as tensors, nothing is stored.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from statewise import kernels
from statewise.ops.precision import float32_recurrence
from statewise.ops.tree import State, carry

Cell = Literal["lstm", "gru", "rnn_tanh", "rnn_relu"]

#: rows of ``weight_ih`` / ``weight_hh`` per unit of hidden size
GATES: dict[str, int] = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


class CellWeights(NamedTuple):
    """The weights of one cell (one layer, one direction), in torch.nn's shapes.

    weight_ih (G, I), weight_hh (G, P), bias_ih (G,), bias_hh (G,), weight_hr (P, H) where
    G = GATES[cell] * H and P = H unless an LSTM projection (``weight_hr``) is given.
    Head-wise: weight_hh (K, G / K, H / K), one block per head (see the module docstring).
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
    if w.weight_hr is not None and w.weight_hh.dim() == 3:
        raise ValueError("weight_hr (a projection) and head-wise weight_hh do not combine")


# ------------------------------------------------------------------ one step


def _hidden_term(h: Tensor, weight_hh: Tensor, base: Tensor | None = None) -> Tensor:
    """``base + W_hh h`` for h (B, P): one (fused) matmul, or one block per head when
    weight_hh is (K, G*d, d) (the result laid out head by head, (B, K*G*d))."""
    if weight_hh.dim() == 3:
        heads, _, width = weight_hh.shape
        hk = h.reshape(h.shape[0], heads, width).transpose(0, 1)  # (K, B, d)
        out = torch.bmm(hk, weight_hh.transpose(1, 2)).transpose(0, 1).reshape(h.shape[0], -1)
        return out if base is None else base + out
    if base is None:
        return h @ weight_hh.t()
    return torch.addmm(base, h, weight_hh.t()) if base.dim() == 2 else base + h @ weight_hh.t()


def _gates(pre: Tensor, n_gates: int, heads: int) -> tuple[Tensor, ...]:
    """Split pre-activations (B, K*G*d), laid out (head, gate, unit), into G tensors (B, K*d)."""
    batch = pre.shape[0]
    split = pre.view(batch, heads, n_gates, -1).unbind(2)
    return tuple(g.reshape(batch, -1) for g in split)


def _heads(weight_hh: Tensor) -> int:
    return weight_hh.shape[0] if weight_hh.dim() == 3 else 1


def _recurrent_term(gi: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor | None) -> Tensor:
    """``gi + W_hh h (+ b_hh)``."""
    out = _hidden_term(h, weight_hh, gi)
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
    i, f, g, o = _gates(gates, 4, _heads(weight_hh))
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
    gh = _hidden_term(h, weight_hh)
    if bias_hh is not None:
        gh = gh + bias_hh
    heads = _heads(weight_hh)
    gi_r, gi_z, gi_n = _gates(gi, 3, heads)
    gh_r, gh_z, gh_n = _gates(gh, 3, heads)
    r = torch.sigmoid(gi_r + gh_r)
    z = torch.sigmoid(gi_z + gh_z)
    n = torch.tanh(gi_n + r * gh_n)
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


@float32_recurrence
def cell_step(cell: Cell, x_t: Tensor, state: State, w: CellWeights) -> State:
    """One whole step of ``cell``: x_t (B, I), state -> new state (see the module docstring)."""
    _check_weights(cell, w)
    gi = input_projection(x_t, w.weight_ih, w.bias_ih)
    return recurrence_step(cell, gi, state, w.weight_hh, w.bias_hh, w.weight_hr)


def cell_output(cell: Cell, state: State) -> Tensor:
    """The output h of a cell's state: ``state[0]`` for the lstm's (h, c), else the state."""
    return state[0] if cell == "lstm" else state


# -------------------------------------------------------------- a sequence

_ATEN = {
    "lstm": torch.lstm,
    "gru": torch.gru,
    "rnn_tanh": torch.rnn_tanh,
    "rnn_relu": torch.rnn_relu,
}


def _aten_sequence(cell: Cell, x: Tensor, state: State, w: CellWeights) -> tuple[Tensor, State]:
    """One layer, one direction, no mask: ATen's fused op, the one torch.nn's modules call
    (``torch.lstm(input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
    batch_first)``), so the speed is torch.nn's."""
    has_biases = w.bias_ih is not None
    params = [w.weight_ih, w.weight_hh]
    if has_biases:
        params += [w.bias_ih, w.bias_hh]
    if w.weight_hr is not None:
        params.append(w.weight_hr)
    hx = tuple(s.unsqueeze(0) for s in state) if cell == "lstm" else state.unsqueeze(0)
    y, *final = _ATEN[cell](x, hx, params, has_biases, 1, 0.0, False, False, True)
    return y, (final[0][0], final[1][0]) if cell == "lstm" else final[0][0]


def _kernel_applies(cell: Cell, x: Tensor, w: CellWeights, reverse: bool) -> bool:
    """The numba kernel covers lstm, gru and tanh cells forward in time, on CPU, float32/64."""
    return (
        cell in ("lstm", "gru", "rnn_tanh")
        and not reverse
        and w.weight_hr is None
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and kernels.current() == "numba"
    )


def _kernel_sequence(
    cell: Cell, x: Tensor, state: State, w: CellWeights, mask: Tensor | None
) -> tuple[Tensor, State]:
    from statewise.kernels.cells import fused_recurrence

    batch, seq_len, _ = x.shape
    weight_hh = w.weight_hh if w.weight_hh.dim() == 3 else w.weight_hh.unsqueeze(0)
    heads, rows, width = weight_hh.shape
    bias_ih, bias_hh = w.bias_ih, w.bias_hh
    if cell != "gru" and bias_ih is not None and bias_hh is not None:
        bias_ih, bias_hh = bias_ih + bias_hh, None
    gx = input_projection(x, w.weight_ih, bias_ih).view(batch, seq_len, heads, rows)
    if bias_hh is not None:
        bias_hh = bias_hh.view(heads, rows)
    leaves = state if cell == "lstm" else (state,)
    leaves = tuple(s.reshape(batch, heads, width) for s in leaves)
    y, final = fused_recurrence(cell, gx, weight_hh, bias_hh, leaves, mask)
    final = tuple(s.reshape(batch, heads * width) for s in final)
    return y.view(batch, seq_len, heads * width), final if cell == "lstm" else final[0]


@float32_recurrence
def run_cell(
    cell: Cell,
    x: Tensor,
    state: State,
    w: CellWeights,
    mask: Tensor | None = None,
    reverse: bool = False,
    fused: bool = True,
) -> tuple[Tensor, State]:
    """Run ``cell`` over a batch-first sequence x (B, T, I) from ``state``.

    Returns (y, final_state) with y (B, T, P): the output h of every step. The input
    projection of all T steps is one matmul; then the recurrence runs by the first path of
    the module docstring that applies (ATen's op, the numba kernel, the loop below).
    ``mask`` (B, T) bool, True = real token: at a masked step the state is carried through
    unchanged (and y there is the carried h). ``reverse=True`` runs from t = T-1 down to 0,
    as the backward direction of a bidirectional layer does; y keeps the input's time order.
    ``fused=False`` forces the loop (the twin of the ATen op and of the numba kernel).
    """
    _check_weights(cell, w)
    batch, seq_len, _ = x.shape
    if seq_len == 0:
        width = cell_output(cell, state).shape[-1]
        return x.new_empty(batch, 0, width), state
    if fused and mask is None and w.weight_hh.dim() == 2:
        if reverse:
            y, state = _aten_sequence(cell, x.flip(1), state, w)
            return y.flip(1), state
        return _aten_sequence(cell, x, state, w)
    if fused and _kernel_applies(cell, x, w, reverse):
        return _kernel_sequence(cell, x, state, w, mask)
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
