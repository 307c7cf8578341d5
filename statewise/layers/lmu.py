"""The Legendre Memory Unit in two forms, sharing the Legendre memory of
:mod:`statewise.ops.legendre` (its (A, B), the zero-order hold, the loop and the FFT form).

Memory (both): M = memory_d channels, each the LTI system of order q over a window of theta
steps, discretised by zero-order hold for unit steps (computed once, in float64). Voelker et
al. leave the discretisation to an ODE solver (Euler as their example, zero-order hold also
considered); keras-lmu's default and the PyTorch ports use zero-order hold, as here:

    theta m'(t) = A m(t) + B u(t),   A_ij = (2i+1) (-1 if i < j else (-1)^(i-j+1)),
    B_i = (2i+1) (-1)^i;   Abar = e^{A/theta},  Bbar = (A/theta)^{-1} (Abar - I) B/theta
    m_t[c] = Abar m_{t-1}[c] + Bbar u_t[c]                           c = 1 .. M

``lmu`` (Voelker, Kajić, Eliasmith 2019, "Legendre Memory Units: Continuous-Time
Representation in Recurrent Neural Networks", equations 4, 6, 7, with the multi-channel
memory of keras-lmu, u_t in R^M instead of a scalar):

    u_t = e_x x_t + e_h h_{t-1} + e_m m_{t-1}          e_x (M, D), e_h (M, H), e_m (M, M q)
    m_t = Abar m_{t-1} + Bbar u_t                      per channel
    h_t = tanh(W_x x_t + W_h h_{t-1} + W_m m_t)        W_x (H, D), W_h (H, H), W_m (H, M q)
    y_t = h_t  (or W_o h_t when hidden_size != d_model)

The hidden state feeds the memory, so the layer is nonlinear in time: only the
"recurrent" mode. Init as hrshtv/pytorch-lmu's port of the paper: e_x, e_h LeCun uniform,
e_m = 0, W_x, W_h, W_m Xavier normal; no biases (the paper's equations have none).

``parallel_lmu`` (Chilkuri & Eliasmith 2021, "Parallelizing Legendre Memory Unit
Training"): no feedback into the memory, so the memory is linear in u and time invariant:

    u_t = W_u x_t + b_u                                W_u (M, D)
    m_t = Abar m_{t-1} + Bbar u_t  =  sum_{s<=t} Abar^{t-s} Bbar u_s + Abar^{t+1} m_0
    y_t = f(W_m m_t + W_x x_t + b_o)                   W_m (D, M q), W_x (D, D)

Modes: "fft" (the convolution by FFT, :func:`statewise.ops.legendre.memory_fft`) and
"recurrent" (the loop, :func:`statewise.ops.legendre.memory_loop`); step() is the
recurrence. The paper allows a nonlinearity f_1 on u; here u is linear in x (f_1 the
identity). f = ``activation``, ReLU by default (as hrshtv/pytorch-lmu's port of the paper).

auto mode of ``parallel_lmu``: the loop's cost per token is a (B M, q) x (q, q) GEMM plus a
fixed Python overhead, the FFT's is O(log T) per (batch, channel, order) row, and on this CPU
the GEMM wins once the batch's memory is large. Measured (torch 2.13, fp32, one thread,
process CPU time because other jobs shared the 2 cores; the whole layer, forward + backward,
q 32, ms): B 8, D 256 (B M q = 8192 rows): T 64 recurrent 16.7, fft 24.4; T 512 133 vs 257;
T 2048 610 vs 1083. B 4, D 256 (4096 rows): T 2048 357 vs 556. B 8, D 64 (2048 rows):
T 512 36 vs 39. B 1, D 256 (1024 rows): T 512 35.5 vs 21.8. B 1, D 64 (256 rows): T 32 1.5
vs 0.8, T 1024 46 vs 5.3. So auto runs "fft" from 16 tokens on when B M q <= 2048, else
"recurrent". See docs/models/parallel_lmu.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError
from statewise.layers.base import SequenceMixer
from statewise.layers.checks import positive_int, positive_number
from statewise.layers.registry import register
from statewise.ops.legendre import legendre_system, memory_fft, memory_loop, memory_step
from statewise.ops.precision import float32_recurrence

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "identity": lambda v: v,
}
# parallel_lmu's auto mode (measured, see the module docstring): fft from FFT_FROM tokens on
# when the batch's memory has at most FFT_ROWS rows (batch x memory_d x order), else the loop
FFT_FROM, FFT_ROWS = 16, 2048


class _LegendreMixer(SequenceMixer):
    """The memory's settings and its fixed (Abar, Bbar), shared by both LMU layers.

    (Abar, Bbar) are no parameters or buffers: order and theta determine them, and they are
    kept in float64 whatever the layer's dtype (a buffer would be rounded by ``.float()``
    and then differ from the float64 system by 1e-8), one copy per device, cast where used.
    """

    def __init__(
        self, d_model: int, order: int, theta: float, memory_d: int | None, mode: str
    ) -> None:
        super().__init__(d_model, mode)
        self.order = positive_int("order", order)
        self.theta = positive_number("theta", theta)
        self.memory_d = max(1, d_model // 8) if memory_d is None else memory_d
        positive_int("memory_d", self.memory_d)
        self._systems: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def system(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(Abar (q, q), Bbar (q,)) in float64 on ``device``."""
        if device not in self._systems:
            a_bar, b_bar = legendre_system(self.order, self.theta)
            self._systems[device] = (a_bar.to(device), b_bar.to(device))
        return self._systems[device]

    @property
    def memory_size(self) -> int:
        """M q: the memory's floats per sequence."""
        return self.memory_d * self.order

    def _zeros(self, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(batch, self.memory_d, self.order, device=device, dtype=dtype)


def _lecun_uniform(w: torch.Tensor) -> None:
    bound = math.sqrt(3.0 / w.shape[1])
    nn.init.uniform_(w, -bound, bound)


@register(
    "lmu",
    family="nonlinear, Legendre memory",
    paper="Voelker et al. 2019, Legendre Memory Units",
    state_size="32 * max(1, d // 8) + d",
)
class LMU(_LegendreMixer):
    """The LMU cell of Voelker et al. (2019) as a sequence mixer (see the module docstring).

    Args:
        d_model: input and output width D.
        order: q, the Legendre polynomials per memory channel.
        theta: the window, in steps, the memory represents.
        memory_d: M, the memory's input channels (default max(1, d_model // 8)).
        hidden_size: H, the width of h (default d_model; otherwise an output projection
            H -> D follows).
        mode: "auto" or "recurrent" (the only mode).

    State: {"m": (B, M, q), "h": (B, H)}. Parameters: e_x (M, D), e_h (M, H), e_m (M, M q),
    W_x (H, D), W_h (H, H), W_m (H, M q), and out_proj (Linear H -> D, no bias) if H != D.

    Under bfloat16 autocast the whole layer runs in float32, like the classic cells: its
    cost is the loop, and a nonlinear recurrence with feedback amplifies the rounding of
    bfloat16 input projections (measured: 1.7e-2 relative error at T 48, 6e-2 at T 1024).
    """

    modes = ("recurrent",)

    def __init__(
        self,
        d_model: int,
        order: int = 32,
        theta: float = 256.0,
        memory_d: int | None = None,
        hidden_size: int | None = None,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, order, theta, memory_d, mode)
        self.hidden_size = d_model if hidden_size is None else hidden_size
        positive_int("hidden_size", self.hidden_size)
        m, h = self.memory_d, self.hidden_size
        self.e_x = nn.Parameter(torch.empty(m, d_model))
        self.e_h = nn.Parameter(torch.empty(m, h))
        self.e_m = nn.Parameter(torch.empty(m, self.memory_size))
        self.W_x = nn.Parameter(torch.empty(h, d_model))
        self.W_h = nn.Parameter(torch.empty(h, h))
        self.W_m = nn.Parameter(torch.empty(h, self.memory_size))
        self.out_proj = nn.Linear(h, d_model, bias=False) if h != d_model else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            _lecun_uniform(self.e_x)
            _lecun_uniform(self.e_h)
            self.e_m.zero_()
            for w in (self.W_x, self.W_h, self.W_m):
                nn.init.xavier_normal_(w)
        if self.out_proj is not None:
            self.out_proj.reset_parameters()

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, order={self.order}, theta={self.theta:g}, "
            f"memory_d={self.memory_d}, hidden_size={self.hidden_size}, mode={self.mode!r}"
        )

    def auto_mode(self, seq_len: int) -> str:
        return "recurrent"

    @float32_recurrence
    def _sequence(
        self, x: torch.Tensor, state: dict, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict]:
        """The whole layer over x (B, T, D), in float32 under autocast (see the class doc):
        the input terms of all steps as two GEMMs, then the loop over time."""
        ex, wx = x @ self.e_x.T, x @ self.W_x.T  # (B, T, M), (B, T, H)
        batch, m_dim = x.shape[0], self.memory_d
        a_bar, b_bar = (t.to(x.dtype) for t in self.system(x.device))
        from_h = torch.cat([self.e_h, self.W_h]).T  # h_{t-1} -> (e_h h, W_h h)
        e_m, w_m = self.e_m.T, self.W_m.T
        m, h, hs = state["m"], state["h"], []
        for t in range(ex.shape[1]):
            rec = h @ from_h
            u = ex[:, t] + rec[:, :m_dim] + m.reshape(batch, -1) @ e_m
            m_new = memory_step(m, u, a_bar, b_bar)
            h_new = torch.tanh(wx[:, t] + rec[:, m_dim:] + m_new.reshape(batch, -1) @ w_m)
            if mask is not None:  # a masked step carries the state through
                keep = mask[:, t, None]
                m_new, h_new = torch.where(keep[..., None], m_new, m), torch.where(keep, h_new, h)
            m, h = m_new, h_new
            hs.append(h)
        out = torch.stack(hs, dim=1)
        return (out if self.out_proj is None else self.out_proj(out)), {"m": m, "h": h}

    def _forward(
        self, x: torch.Tensor, state: dict, mask: torch.Tensor | None, mode: str
    ) -> tuple[torch.Tensor, dict]:
        if x.shape[1] == 0:
            return x.new_zeros(x.shape), state
        y, state = self._sequence(x, state, mask)
        return y.to(x.dtype), state

    def _step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        y, state = self._forward(x_t.unsqueeze(1), state, None, "recurrent")
        return y[:, 0], state

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict:
        return {
            "m": self._zeros(batch_size, device, dtype),
            "h": torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype),
        }


@register(
    "parallel_lmu",
    family="LTI state space (Legendre memory)",
    paper="Chilkuri & Eliasmith 2021, Parallelizing Legendre Memory Unit Training",
    state_size="32 * max(1, d // 8)",
)
class ParallelLMU(_LegendreMixer):
    """The parallel LMU of Chilkuri & Eliasmith (2021) as a sequence mixer (module docstring).

    Args:
        d_model: input and output width D.
        order: q, the Legendre polynomials per memory channel.
        theta: the window, in steps, the memory represents.
        memory_d: M, the memory's input channels (default max(1, d_model // 8)).
        activation: f of the output: "relu" (default), "gelu", "tanh" or "identity".
        mode: "auto" (see ``auto_mode``), "recurrent" or "fft".

    State: m (B, M, q). Parameters: u_proj (W_u, b_u: Linear D -> M), m_proj (W_m, b_o:
    Linear M q -> D), x_proj (W_x: Linear D -> D, no bias), torch's Linear init.
    """

    modes = ("recurrent", "fft")

    def __init__(
        self,
        d_model: int,
        order: int = 32,
        theta: float = 256.0,
        memory_d: int | None = None,
        activation: str = "relu",
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, order, theta, memory_d, mode)
        if activation not in ACTIVATIONS:
            raise ArgumentError(
                f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}"
            )
        self.activation = activation
        self.u_proj = nn.Linear(d_model, self.memory_d)
        self.m_proj = nn.Linear(self.memory_size, d_model)
        self.x_proj = nn.Linear(d_model, d_model, bias=False)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, order={self.order}, theta={self.theta:g}, "
            f"memory_d={self.memory_d}, activation={self.activation!r}, mode={self.mode!r}"
        )

    def auto_mode(self, seq_len: int, batch: int = 1) -> str:
        """The FFT from FFT_FROM tokens on if batch x memory_d x order <= FFT_ROWS, else the
        loop. ``resolve_mode(T)`` reports the choice for one sequence; a forward in auto
        mode decides with its own batch size."""
        small = batch * self.memory_size <= FFT_ROWS
        return "fft" if seq_len >= FFT_FROM and small else "recurrent"

    def _out(self, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """f(W_m m_t + b_o + W_x x_t): m (..., M, q), x (..., D)."""
        m = m.to(x.dtype).flatten(-2)
        return ACTIVATIONS[self.activation](self.m_proj(m) + self.x_proj(x))

    def _forward(
        self, x: torch.Tensor, state: torch.Tensor, mask: torch.Tensor | None, mode: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1] == 0:
            return x.new_zeros(x.shape), state
        if self.mode == "auto":  # the choice depends on the batch too (auto_mode)
            mode = self.auto_mode(x.shape[1], x.shape[0])
        memory = memory_fft if mode == "fft" else memory_loop
        m, final = memory(self.u_proj(x), *self.system(x.device), state, mask)
        return self._out(m, x), final

    def _step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, final = memory_loop(self.u_proj(x_t).unsqueeze(1), *self.system(x_t.device), state)
        return self._out(m[:, 0], x_t), final

    def _init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        return self._zeros(batch_size, device, dtype)
