"""The classic nonlinear RNNs: Elman (1990), LSTM (Hochreiter & Schmidhuber 1997), GRU (Cho et al.
2014).

Two faces over the same ops (statewise.ops.cells):

- ``LSTM``, ``GRU``, ``RNN``: drop-in replacements for ``torch.nn.LSTM``/``GRU``/``RNN``, with
  the same constructor arguments, parameter names, shapes, init, forward signature and output
  layouts, so ``ours.load_state_dict(torch_module.state_dict())`` works both ways.
  PackedSequence is not supported (pass a padded tensor instead).
- ``LSTMMixer``, ``GRUMixer``, ``RNNMixer``: sequence mixers on the layer contract, registered
  as ``lstm``, ``gru`` and ``rnn``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from statewise.errors import ArgumentError, ArgumentTypeError
from statewise.layers.base import SequenceMixer
from statewise.layers.checks import positive_int
from statewise.layers.registry import register
from statewise.ops.cells import GATES, Cell, CellWeights, cell_output, cell_step, run_cell
from statewise.ops.tree import State

# ============================================================ torch.nn drop-ins


class _RNNBase(nn.Module):
    """What LSTM, GRU and RNN share: torch.nn's parameters, checks and layer/direction loop."""

    def __init__(
        self,
        cell: Cell,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for arg, value in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
            ("proj_size", proj_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ArgumentTypeError(f"{arg} must be an int, got {type(value).__name__}")
        for arg, value in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
        ):
            if value <= 0:
                raise ArgumentError(f"{arg} must be greater than zero, got {value}")
        if proj_size < 0:
            raise ArgumentError(
                f"proj_size must be >= 0 (0 disables the projection), got {proj_size}"
            )
        if proj_size >= hidden_size:
            raise ArgumentError(
                f"proj_size must be smaller than hidden_size, got {proj_size} >= {hidden_size}"
            )
        for arg, value in (
            ("bias", bias),
            ("batch_first", batch_first),
            ("bidirectional", bidirectional),
        ):
            if not isinstance(value, bool):
                raise ArgumentTypeError(f"{arg} must be a bool, got {type(value).__name__}")
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, numbers.Number)
            or not 0 <= dropout <= 1
        ):
            raise ArgumentError(f"dropout must be a number in [0, 1], got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout is applied between recurrent layers, so dropout > 0 expects "
                f"num_layers > 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=3,
            )
        self.cell: Cell = cell
        self.mode = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN_TANH", "rnn_relu": "RNN_RELU"}[
            cell
        ]
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size

        factory = {"device": device, "dtype": dtype}
        gate_size = GATES[cell] * hidden_size
        out_size = proj_size if proj_size > 0 else hidden_size
        self._weight_names: list[list[str]] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else out_size * self.num_directions
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                shapes = [
                    ("weight_ih", (gate_size, layer_input)),
                    ("weight_hh", (gate_size, out_size)),
                ]
                if bias:
                    shapes += [("bias_ih", (gate_size,)), ("bias_hh", (gate_size,))]
                if proj_size > 0:
                    shapes += [("weight_hr", (proj_size, hidden_size))]
                names = []
                for name, shape in shapes:
                    setattr(self, name + suffix, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(name + suffix)
                self._weight_names.append(names)
        self.reset_parameters()

    # ---------------------------------------------------------- properties
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _out_size(self) -> int:
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """The parameters per (layer, direction), in torch.nn's order."""
        return [[getattr(self, n) for n in names] for names in self._weight_names]

    def reset_parameters(self) -> None:
        """torch.nn's init: every parameter uniform in ±1/sqrt(hidden_size)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def flatten_parameters(self) -> None:
        """A no-op, for code written against torch.nn (there is no cuDNN weight buffer here)."""

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        return s

    def _weights(self, index: int) -> CellWeights:
        """The weights of row ``index`` = layer * num_directions + direction of h_0/h_n."""
        layer, direction = divmod(index, self.num_directions)
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        return CellWeights(*(getattr(self, name + suffix, None) for name in CellWeights._fields))

    # --------------------------------------------------------------- checks
    def _check_input(self, input: Tensor) -> None:
        if isinstance(input, PackedSequence):
            raise ArgumentTypeError(
                f"{type(self).__name__}: PackedSequence input is not supported; pass a padded "
                "tensor (torch.nn.utils.rnn.pad_packed_sequence) instead"
            )
        if not isinstance(input, Tensor):
            raise ArgumentTypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            layout = (
                "(batch, seq_len, input_size)"
                if self.batch_first
                else ("(seq_len, batch, input_size)")
            )
            raise ArgumentError(
                f"input must be 3-D {layout} or 2-D (seq_len, input_size) unbatched, "
                f"got a {input.dim()}-D tensor of shape {tuple(input.shape)}"
            )
        if input.shape[-1] != self.input_size:
            raise ArgumentError(
                f"input has size {input.shape[-1]} in its last dim, expected "
                f"input_size={self.input_size}"
            )
        if not input.is_floating_point():
            raise ArgumentTypeError(f"input must be a floating tensor, got {input.dtype}")
        ref = self.weight_ih_l0
        if input.dtype != ref.dtype:
            raise ArgumentTypeError(
                f"input has dtype {input.dtype} but the weights are {ref.dtype}; convert one "
                f"of them (input.to({ref.dtype}) or module.to({input.dtype}))"
            )

    def _check_hidden(
        self, hx: object, name: str, width: int, batch: int, batched: bool, ref: Tensor
    ) -> Tensor:
        """Validate one (L*D, B, width) state tensor (2-D when unbatched); return it 3-D."""
        if not isinstance(hx, Tensor):
            raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(hx).__name__}")
        rows = self.num_layers * self.num_directions
        if batched:
            expected: tuple[int, ...] = (rows, batch, width)
            kind = "batched 3-D input"
        else:
            expected = (rows, width)
            kind = "unbatched 2-D input"
        if tuple(hx.shape) != expected:
            raise ArgumentError(
                f"{name} must have shape {expected} (num_layers * num_directions"
                f"{', batch' if batched else ''}, {width}) for {kind}, got {tuple(hx.shape)}"
            )
        if hx.dtype != ref.dtype:
            raise ArgumentTypeError(f"{name} has dtype {hx.dtype}, expected {ref.dtype} like input")
        if hx.device != ref.device:
            raise ArgumentError(f"{name} is on {hx.device}, expected {ref.device} like input")
        return hx if batched else hx.unsqueeze(1)

    def _initial_state(self, hx: object, x: Tensor, batched: bool) -> list[State]:
        """Per (layer, direction), the cell's initial state (each (B, ...), batch-first)."""
        raise NotImplementedError

    # -------------------------------------------------------------- forward
    def _run(self, input: Tensor, hx: object) -> tuple[Tensor, list[State]]:
        self._check_input(input)
        batched = input.dim() == 3
        if not batched:
            x = input.unsqueeze(0)
        else:
            x = input if self.batch_first else input.transpose(0, 1)
        states = self._initial_state(hx, x, batched)
        finals: list[State] = []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                x = F.dropout(x, p=self.dropout, training=True)
            outs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                y, final = run_cell(
                    self.cell, x, states[index], self._weights(index), reverse=direction == 1
                )
                outs.append(y)
                finals.append(final)
            x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        if not batched:
            output = x.squeeze(0)
        else:
            output = x if self.batch_first else x.transpose(0, 1)
        return output, finals

    @staticmethod
    def _stack(hs: list[Tensor], batched: bool) -> Tensor:
        """(L*D) states (B, W) -> h_n (L*D, B, W), or (L*D, W) when unbatched."""
        h_n = torch.stack(hs, dim=0)
        return h_n if batched else h_n.squeeze(1)


class _SingleStateRNN(_RNNBase):
    """GRU and RNN: the state is one tensor h_0 (num_layers * num_directions, B, H)."""

    def _initial_state(self, hx: object, x: Tensor, batched: bool) -> list[State]:
        rows = self.num_layers * self.num_directions
        if hx is None:
            return [x.new_zeros(x.shape[0], self.hidden_size) for _ in range(rows)]
        h0 = self._check_hidden(hx, "hx", self.hidden_size, x.shape[0], batched, x)
        return list(h0.unbind(0))

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """input (T, B, I) or (B, T, I) with batch_first, or (T, I) unbatched; hx (L*D, B, H).

        Returns (output, h_n): output (T, B, D*H) (batch-first when batch_first), h_n
        (num_layers * num_directions, B, H), the batch dim dropped for unbatched input.
        """
        output, finals = self._run(input, hx)
        return output, self._stack(finals, input.dim() == 3)


class GRU(_SingleStateRNN):
    """A drop-in for ``torch.nn.GRU`` (same arguments, parameter names, init and outputs).

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr), z = sigmoid(W_iz x + b_iz + W_hz h + b_hz),
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            "gru",
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            0,
            device,
            dtype,
        )


class RNN(_SingleStateRNN):
    """A drop-in for ``torch.nn.RNN``: h' = act(W_ih x + b_ih + W_hh h + b_hh), act tanh or relu."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: Literal["tanh", "relu"] = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ArgumentError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(
            f"rnn_{nonlinearity}",
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            0,
            device,
            dtype,
        )


class LSTM(_RNNBase):
    """A drop-in for ``torch.nn.LSTM`` (same arguments, parameter names, init and outputs).

    i, f, g, o = sigmoid/sigmoid/tanh/sigmoid(W_i* x + b_i* + W_h* h + b_h*),
    c' = f * c + i * g, h' = o * tanh(c') (then h' = W_hr h' when proj_size > 0).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            "lstm",
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            proj_size,
            device,
            dtype,
        )

    def _initial_state(self, hx: object, x: Tensor, batched: bool) -> list[State]:
        rows = self.num_layers * self.num_directions
        batch = x.shape[0]
        if hx is None:
            return [
                (x.new_zeros(batch, self._out_size), x.new_zeros(batch, self.hidden_size))
                for _ in range(rows)
            ]
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise ArgumentTypeError(
                f"hx must be a tuple (h_0, c_0) of two tensors for LSTM, got "
                f"{type(hx).__name__}"
                + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else "")
            )
        h0 = self._check_hidden(hx[0], "hx[0] (h_0)", self._out_size, batch, batched, x)
        c0 = self._check_hidden(hx[1], "hx[1] (c_0)", self.hidden_size, batch, batched, x)
        return list(zip(h0.unbind(0), c0.unbind(0), strict=True))

    def forward(
        self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """input (T, B, I) or (B, T, I) with batch_first, or (T, I) unbatched; hx (h_0, c_0).

        Returns (output, (h_n, c_n)): output (T, B, D*P) (batch-first when batch_first), h_n
        (num_layers * num_directions, B, P), c_n (num_layers * num_directions, B, H), where
        P = proj_size or hidden_size; the batch dim is dropped for unbatched input.
        """
        output, finals = self._run(input, hx)
        batched = input.dim() == 3
        h_n = self._stack([h for h, _ in finals], batched)
        c_n = self._stack([c for _, c in finals], batched)
        return output, (h_n, c_n)


# ================================================================ the mixers


class _CellMixer(SequenceMixer):
    """A classic cell as a sequence mixer: (B, T, D) -> (B, T, D), state batch-first.

    The cell has parameters ``weight_ih`` (G, D), ``weight_hh`` (G, H), ``bias_ih`` and
    ``bias_hh`` (G,) in torch.nn's layout (as in ``torch.nn.LSTMCell``); when hidden_size H
    differs from d_model, ``out_proj`` (a Linear H -> D) maps the output back to d_model.
    With ``n_heads`` K > 1 the recurrence is head-wise (FlashRNN): ``weight_hh`` is
    (K, G/K, H/K), one block per head, and the gate rows of ``weight_ih`` and the biases are
    laid out head by head (head, gate, unit); see statewise.ops.cells.

    ``weight_drop`` p: DropConnect on the hidden-to-hidden matrix (AWD-LSTM's weight drop,
    Merity et al. 2017; they use p = 0.5 on a 3-layer LSTM): in training mode each forward
    draws one Bernoulli(1 - p) mask over ``weight_hh``'s entries and runs the recurrence
    with ``weight_hh * mask / (1 - p)``, the same matrix at every time step and for every
    row, whichever path runs it (ATen's fused op, the numba kernel or the loop all take the
    dropped matrix as their weight). In eval mode nothing is dropped. ``step`` in training
    mode is one forward of one token, so each call draws its own mask (for one mask over a
    whole sequence, run ``forward``; generation runs in eval mode). 0 (default): off.
    """

    modes = ("recurrent",)
    cell: Cell

    def __init__(
        self,
        d_model: int,
        hidden_size: int | None = None,
        n_heads: int = 1,
        mode: str = "auto",
        weight_drop: float = 0.0,
    ) -> None:
        super().__init__(d_model, mode)
        if (
            isinstance(weight_drop, bool)
            or not isinstance(weight_drop, numbers.Real)
            or not 0 <= weight_drop < 1
        ):
            raise ArgumentError(f"weight_drop must be a number in [0, 1), got {weight_drop!r}")
        self.weight_drop = float(weight_drop)
        if hidden_size is None:
            hidden_size = d_model
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size <= 0:
            raise ArgumentError(f"hidden_size must be a positive int or None, got {hidden_size!r}")
        self.n_heads = positive_int("n_heads", n_heads)
        if hidden_size % n_heads:
            raise ArgumentError(f"n_heads={n_heads} must divide hidden_size={hidden_size}")
        self.hidden_size = hidden_size
        self.head_dim = hidden_size // n_heads
        gate_size = GATES[self.cell] * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gate_size, d_model))
        if n_heads == 1:  # torch.nn's layout
            self.weight_hh = nn.Parameter(torch.empty(gate_size, hidden_size))
        else:  # one (G*d, d) block per head
            self.weight_hh = nn.Parameter(torch.empty(n_heads, gate_size // n_heads, self.head_dim))
        self.bias_ih = nn.Parameter(torch.empty(gate_size))
        self.bias_hh = nn.Parameter(torch.empty(gate_size))
        self.out_proj = nn.Linear(hidden_size, d_model) if hidden_size != d_model else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn's init for the cell (uniform in ±1/sqrt(hidden_size)); Linear's for out_proj."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
            nn.init.uniform_(p, -bound, bound)
        if self.out_proj is not None:
            self.out_proj.reset_parameters()

    def extra_repr(self) -> str:
        heads = f", n_heads={self.n_heads}" if self.n_heads != 1 else ""
        drop = f", weight_drop={self.weight_drop:g}" if self.weight_drop else ""
        return (
            f"d_model={self.d_model}, hidden_size={self.hidden_size}{heads}{drop}, "
            f"mode={self.mode!r}"
        )

    def _weights(self) -> CellWeights:
        """The cell's weights for one forward: ``weight_hh`` with DropConnect applied in
        training mode (a fresh mask per call, see the class docstring)."""
        weight_hh = self.weight_hh
        if self.training and self.weight_drop > 0:
            weight_hh = F.dropout(weight_hh, p=self.weight_drop, training=True)
        return CellWeights(self.weight_ih, weight_hh, self.bias_ih, self.bias_hh)

    def _project(self, h: Tensor) -> Tensor:
        return h if self.out_proj is None else self.out_proj(h)

    def _forward(
        self, x: Tensor, state: State, mask: Tensor | None, mode: str
    ) -> tuple[Tensor, State]:
        y, state = run_cell(self.cell, x, state, self._weights(), mask=mask)
        return self._project(y), state

    def _step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        state = cell_step(self.cell, x_t, state, self._weights())
        return self._project(cell_output(self.cell, state)), state

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> State:
        def zeros() -> Tensor:
            return torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)

        return (zeros(), zeros()) if self.cell == "lstm" else zeros()


@register(
    "lstm",
    family="nonlinear",
    paper="Hochreiter & Schmidhuber 1997, Long Short-Term Memory",
    state_size="2*d",
)
class LSTMMixer(_CellMixer):
    """LSTM as a mixer; state (h, c), each (B, hidden_size). See docs/models/lstm.md."""

    cell = "lstm"


@register(
    "gru",
    family="nonlinear",
    paper="Cho et al. 2014, Learning Phrase Representations using RNN Encoder-Decoder",
    state_size="d",
)
class GRUMixer(_CellMixer):
    """GRU as a mixer; state h (B, hidden_size). See docs/models/gru.md."""

    cell = "gru"


@register(
    "rnn",
    family="nonlinear",
    paper="Elman 1990, Finding Structure in Time",
    state_size="d",
)
class RNNMixer(_CellMixer):
    """The tanh Elman RNN as a mixer; state h (B, hidden_size). See docs/models/rnn.md."""

    cell = "rnn_tanh"


# the torch.nn-style classes by the registered name of their mixer
TORCH_STYLE: dict[str, type[_RNNBase]] = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
