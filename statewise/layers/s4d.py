"""S4D (Gu, Gupta, Goel, Ré 2022, "On the Parameterization and Initialization of Diagonal
State Space Models"): the diagonal form of LSSL/S4.

Per channel h (H = d_model channels, each its own single-input single-output SSM) and
mode n (N/2 complex modes; their conjugates are implied, so the output is real):

    x'(t) = A x(t) + B u(t),   y(t) = C x(t) + D u(t)          A = diag(-exp(log_A_real) + i A_imag)
    Abar = exp(dt A),   Bbar = (Abar - 1) / A * B               zero-order hold, dt = exp(log_dt)
    x_t = Abar x_{t-1} + Bbar u_t,   y_t = 2 Re(sum_n C_n x_{t,n}) + D u_t
    out_t = GLU(W GELU(y_t) + b)      (or W GELU(y_t) + b with output="linear")

The output map is the S4D standalone block's (state-spaces/s4 ``models/s4/s4d.py``):
GELU, a pointwise linear map H -> 2H and a GLU; that code folds B into C (B = 1), here B is
a learnable complex parameter initialised to 1 as in the full S4 code. (Bbar uses expm1,
so it stays accurate in float32 when |dt A| is small.)

Init: A_n = -1/2 + i pi n ("lin", S4D-Lin) or -1/2 + i (N/pi) (N/(2n+1) - 1) ("inv",
S4D-Inv), n = 0..N/2-1; log dt ~ U(log dt_min, log dt_max); C ~ complex normal; D ~ N(0,1).

Modes:
- "recurrent": the discretised recurrence, by :func:`statewise.ops.scan.linear_recurrence`
  (a loop over time with a hand-written backward) on complex states.
- "conv": the kernel K_l = 2 Re(C Abar^l Bbar) by a blocked Vandermonde GEMM, applied by
  FFT, plus the initial state's response 2 Re(C Abar^{t+1} x0) in closed form and the final
  state Abar^T x0 + Bbar sum_s Abar^{T-1-s} u_s (:func:`statewise.ops.fft_conv.lti_conv`),
  so pieces equal whole. With a mask the conv mode stays a convolution: each row's real
  tokens are compacted in order (see the op); there is no recurrent fallback.

State: x as real/imaginary pairs, a real tensor (B, H, N/2, 2) (N floats per channel), so
it is a plain float tensor for saving, dtype checks and gradcheck; the layer works on the
complex view internally.

auto mode is "conv" from 16 tokens on. Measured on this machine (torch 2.13, fp32, one
thread, process CPU time because other jobs shared the 2 cores; the whole layer, forward /
forward + backward, fresh state, d_state 64), ms:

    B8 D256:  T=4: recurrent 7 / 27, conv 8 / 18;  T=16: 25 / 80 vs 14 / 31;
              T=256: 302 / 1492 vs 46 / 108;  T=1024: 1340 / 6650 vs 137 / 396;
              T=4096: conv 1000 / 2500 (the recurrent form would hold 2 GB of states)
    B1 D64:   T=16: recurrent 1.5 / 3.6, conv 2.5 / 5.6;  T=64: 2.7 / 8.8 vs 4.9 / 12.5;
              T=256: 8.9 / 34 vs 6.6 / 15

Below 16 tokens the two are within a few ms; step() is the recurrence. See
docs/models/s4d.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError
from statewise.layers.base import SequenceMixer
from statewise.layers.checks import no_weight_decay, positive_int
from statewise.layers.registry import register
from statewise.ops.fft_conv import cexp, lti_conv
from statewise.ops.scan import linear_recurrence

INITS = ("lin", "inv")
OUTPUTS = ("glu", "linear")
CONV_FROM = 16  # auto mode: conv from this length on (measured, see the module docstring)
# the S4 code base trains A and dt at lr = min(0.001, the model's lr), without weight decay
DYNAMICS_LR_MAX = 1e-3


def s4d_imag(init: str, d_state: int) -> torch.Tensor:
    """Im(A_n), n = 0 .. d_state/2 - 1, for S4D-Lin ("lin") or S4D-Inv ("inv"), float64."""
    n = torch.arange(d_state // 2, dtype=torch.float64)
    if init == "lin":
        return math.pi * n
    return d_state / math.pi * (d_state / (2 * n + 1) - 1)


@register(
    "s4d",
    family="LTI state space",
    paper="Gu et al. 2022, On the Parameterization and Initialization of Diagonal SSMs",
    state_size="64 * d",
)
class S4D(SequenceMixer):
    """S4D: per channel a diagonal complex linear time-invariant SSM, then GELU and a GLU.

    Args:
        d_model: input and output width H; each channel has its own SSM.
        d_state: N, the real state size per channel: N/2 complex modes (must be even).
        init: "lin" (S4D-Lin, default) or "inv" (S4D-Inv), the initial imaginary parts of A.
        dt_min, dt_max: range of the log-uniform initial step sizes.
        output: "glu" (Linear H -> 2H then GLU, as in the S4D standalone code) or "linear"
            (Linear H -> H).
        mode: "auto" ("conv" from 16 tokens on), "recurrent" or "conv".

    State: (B, H, N/2, 2) float, the complex modes as (real, imaginary) pairs.
    Parameters: log_dt (H), log_A_real and A_imag (H, N/2), B and C (H, N/2, 2) as
    (real, imaginary) pairs, D (H), out_proj: 2H^2 + 3HN + 4H in all with "glu".
    log_dt, log_A_real, A_imag and B carry ``_optim = {"weight_decay": 0.0}`` (the S4
    convention: no weight decay on the SSM's dynamics), and log_dt, log_A_real and A_imag
    also ``"lr_max": 1e-3``: they train at lr min(train.lr, 1e-3), as the S4 code base
    registers A and dt (``lr=min(0.001, args.lr)`` in its S4D example).
    """

    modes = ("recurrent", "conv")

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        init: str = "lin",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        output: str = "glu",
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        positive_int("d_state", d_state)
        if d_state % 2:
            raise ArgumentError(
                f"d_state must be even (N/2 complex conjugate pairs), got {d_state}"
            )
        if init not in INITS:
            raise ArgumentError(f"init must be one of {INITS}, got {init!r}")
        if output not in OUTPUTS:
            raise ArgumentError(f"output must be one of {OUTPUTS}, got {output!r}")
        if not 0 < dt_min <= dt_max:
            raise ArgumentError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.d_state, self.init, self.output = d_state, init, output
        self.dt_min, self.dt_max = dt_min, dt_max
        h, n = d_model, d_state // 2
        self.log_dt = nn.Parameter(torch.empty(h))
        self.log_A_real = nn.Parameter(torch.empty(h, n))
        self.A_imag = nn.Parameter(torch.empty(h, n))
        self.B = nn.Parameter(torch.empty(h, n, 2))
        self.C = nn.Parameter(torch.empty(h, n, 2))
        self.D = nn.Parameter(torch.empty(h))
        self.out_proj = nn.Linear(h, 2 * h if output == "glu" else h)
        no_weight_decay(self.log_dt, self.log_A_real, self.A_imag, self.B)
        for p in (self.log_dt, self.log_A_real, self.A_imag):  # the S4 code's lr for A, dt
            p._optim = {**p._optim, "lr_max": DYNAMICS_LR_MAX}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        h, n = self.d_model, self.d_state // 2
        with torch.no_grad():
            lo, hi = math.log(self.dt_min), math.log(self.dt_max)
            self.log_dt.copy_(torch.rand(h) * (hi - lo) + lo)
            self.log_A_real.fill_(math.log(0.5))
            self.A_imag.copy_(s4d_imag(self.init, self.d_state).expand(h, n))
            self.B.copy_(torch.tensor([1.0, 0.0]).expand(h, n, 2))
            self.C.copy_(torch.randn(h, n, 2) * math.sqrt(0.5))  # complex normal, E|C|^2 = 1
            self.D.normal_()
        self.out_proj.reset_parameters()

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, init={self.init!r}, "
            f"output={self.output!r}, mode={self.mode!r}"
        )

    def auto_mode(self, seq_len: int) -> str:
        return "conv" if seq_len >= CONV_FROM else "recurrent"

    # ------------------------------------------------------------ the SSM
    def discretize(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log Abar = dt A, Bbar = (exp(dt A) - 1) / A * B and 2C, each (H, N/2) complex."""
        a = torch.complex(-torch.exp(self.log_A_real), self.A_imag)
        dt_a = torch.exp(self.log_dt).unsqueeze(-1) * a
        b = torch.view_as_complex(self.B.contiguous())
        c = torch.view_as_complex(self.C.contiguous())
        return dt_a, torch.expm1(dt_a) / a * b, 2 * c

    def _ssm_recurrent(
        self, u: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """u (B, T, H) real, x0 (B, H, N/2) complex -> y (B, T, H), x_T (B, H, N/2)."""
        log_a, b_bar, c2 = self.discretize()
        a = cexp(log_a)[None, None]  # (1, 1, H, N/2)
        bu = b_bar * u.unsqueeze(-1)  # (B, T, H, N/2)
        if mask is not None:
            keep = mask[:, :, None, None]
            a = torch.where(keep, a, torch.ones_like(a))
            bu = torch.where(keep, bu, torch.zeros_like(bu))
        x = linear_recurrence(a, bu, x0, mode="loop")
        y = (x.real * c2.real - x.imag * c2.imag).sum(dim=-1)  # Re(2C x)
        return y, x[:, -1]

    def _ssm_conv(
        self, u: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        log_a, b_bar, c2 = self.discretize()
        y, final = lti_conv(u.transpose(1, 2), log_a, b_bar, c2, x0, mask)
        return y.transpose(1, 2), final

    def _out(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        z = self.out_proj(F.gelu(y + self.D * u))
        return F.glu(z, dim=-1) if self.output == "glu" else z

    # ---------------------------------------------------------- contract
    def _forward(
        self, x: torch.Tensor, state: torch.Tensor, mask: torch.Tensor | None, mode: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1] == 0:
            return x.new_zeros(x.shape), state
        x0 = torch.complex(state[..., 0], state[..., 1])
        run = self._ssm_conv if mode == "conv" else self._ssm_recurrent
        y, final = run(x, x0, mask)
        return self._out(y, x), torch.stack([final.real, final.imag], dim=-1)

    def _step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_a, b_bar, c2 = self.discretize()
        x = cexp(log_a) * torch.complex(state[..., 0], state[..., 1])
        x = x + b_bar * x_t.unsqueeze(-1)
        y = (x.real * c2.real - x.imag * c2.imag).sum(dim=-1)
        return self._out(y, x_t), torch.stack([x.real, x.imag], dim=-1)

    def _init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        shape = (batch_size, self.d_model, self.d_state // 2, 2)
        return torch.zeros(shape, device=device, dtype=dtype)
