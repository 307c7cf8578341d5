"""LRU, the Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural
Networks for Long Sequences").

    lambda = exp(-exp(nu_log) + i exp(theta_log))     complex diagonal, |lambda| < 1, (N,)
    gamma  = exp(gamma_log)                            normalisation, init sqrt(1 - |lambda|^2)
    h_t    = lambda * h_{t-1} + gamma * (B x_t)        B = B_re + i B_im, complex (N, D)
    y_t    = Re(C h_t) + D * x_t                       C = C_re + i C_im (D, N); D diagonal

Ring initialisation (as in the paper and its minimal-LRU code), u ~ U(0, 1) per state:
|lambda| = sqrt(u (r_max^2 - r_min^2) + r_min^2), i.e. uniform on the ring's area,
nu_log = log(-log |lambda|); theta_log = log(max_phase * u'); gamma_log = log sqrt(1 -
|lambda|^2); B_re, B_im ~ N(0, 1 / (2 D)); C_re, C_im ~ N(0, 1 / N); D ~ N(0, 1).

The recurrence is h_t = a_t h_{t-1} + b_t with a constant complex a = lambda and
b_t = (gamma * B) x_t, run by :func:`statewise.ops.scan.linear_recurrence` as a loop over
time ("recurrent") or a doubling scan ("scan"), both in complex arithmetic. The input and
output maps are real GEMMs: B x as one (2N, D) matmul whose output is read as complex
pairs, Re(C h) as one (D, 2N) matmul over the (re, im) pairs of h.

State: the complex h (B, N) is kept as a real tensor (B, N, 2) of its (real, imaginary)
parts, ``torch.view_as_real`` layout: a real leaf saves to safetensors, slices per stream,
casts with the layer's dtype and draws as a valid random state, which a complex leaf
would not. All parameters are real too.

Negative eigenvalues (``negative_eigenvalues=True``), after Grazzi et al. 2025: the LRU's
eigenvalues already have phases, so -1 < lambda < 0 is reachable in principle through
theta = pi, but only by a phase that starts at U(0, max_phase) (often a small max_phase for
long-range tasks) and moves far. This option applies Grazzi's map a -> 2a - 1 to the
modulus instead: lambda = (2 exp(-exp(nu_log)) - 1) exp(i exp(theta_log)), so the
real-diagonal case (theta = 0) covers (-1, 1) and crosses zero continuously. nu_log is
initialised so that the initial lambda has exactly the default ring distribution
(2 exp(-exp(nu_log)) - 1 = |lambda|). Caveat: lambda does not depend on the input (the LRU
is time-invariant), so unlike input-dependent gates this does not by itself give parity.

Masked steps use a = 1, b = 0 (the state passes through unchanged). In float16/bfloat16
the complex recurrence runs in float32 (torch has no complex bfloat16); projections and
the stored state stay in the layer's dtype.

auto mode is "recurrent": measured on this machine (2 cores, torch 2.13, complex64
recurrence alone, B 8, N 512, forward + backward) the loop takes 24 ms vs 164 ms for the
scan at T 256 and 91 ms vs 1.05 s at T 1024; the whole layer (single-thread CPU time)
127 ms vs 466 ms at T 256, and the loop wins even at B 1, N 64 (16 vs 24 ms). See
docs/models/lru.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError
from statewise.layers.checks import flag, positive_int
from statewise.layers.mingru import DiagonalLinearMixer
from statewise.layers.registry import register


def ring_init(
    n: int, r_min: float, r_max: float, max_phase: float, negative_eigenvalues: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """nu_log, theta_log, gamma_log for n eigenvalues uniform on the ring r_min <= |z| <= r_max
    with phases U(0, max_phase). With ``negative_eigenvalues`` the modulus is
    2 exp(-exp(nu_log)) - 1, so nu_log solves that for the drawn |lambda|."""
    # float64, so that |lambda| close to 1 (r_max = 1) does not round to 1 in log(-log ...);
    # u is kept off 0 (probability 2^-53 per draw) so no parameter starts at -inf
    u_mod, u_phase = (torch.rand(n, dtype=torch.float64).clamp_min(1e-12) for _ in range(2))
    modulus = torch.sqrt(u_mod * (r_max**2 - r_min**2) + r_min**2)
    stored = (1.0 + modulus) / 2.0 if negative_eigenvalues else modulus
    nu_log = torch.log(-torch.log(stored))
    theta_log = torch.log(max_phase * u_phase)
    gamma_log = 0.5 * torch.log1p(-(modulus**2))
    dtype = torch.get_default_dtype()
    return nu_log.to(dtype), theta_log.to(dtype), gamma_log.to(dtype)


def _real_work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype the complex recurrence runs in: float64 stays, float32 stays, and
    float16 / bfloat16 (which have no complex type in torch on CPU) go to float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_init(r_min: float, r_max: float, max_phase: float) -> None:
    for name, value in (("r_min", r_min), ("r_max", r_max), ("max_phase", max_phase)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ArgumentError(f"{name} must be a number, got {value!r}")
    if not 0.0 <= r_min <= r_max <= 1.0 or r_min == 1.0:
        raise ArgumentError(f"need 0 <= r_min <= r_max <= 1, r_min < 1, got {r_min}, {r_max}")
    if max_phase <= 0:
        raise ArgumentError(f"max_phase must be positive, got {max_phase}")


@register(
    "lru",
    family="diagonal linear",
    paper="Orvieto et al. 2023, Resurrecting Recurrent Neural Networks for Long Sequences",
    state_size="2 * d",
)
class LRU(DiagonalLinearMixer):
    """The Linear Recurrent Unit: a complex diagonal linear recurrence with stable init.

    Args:
        d_model: input and output width D.
        d_hidden: number N of complex states (default D); the state holds 2N floats.
        r_min, r_max: the ring r_min <= |lambda| < r_max (<= 1) of the initial eigenvalues.
        max_phase: initial phases are U(0, max_phase).
        negative_eigenvalues: the modulus of lambda is 2 exp(-exp(nu_log)) - 1 in (-1, 1)
            instead of exp(-exp(nu_log)) in (0, 1) (see the module docstring).
        mode: "auto" (= "recurrent"), "recurrent" or "scan".

    State: (B, N, 2) real, the (real, imaginary) parts of h. Parameters: ``nu_log``,
    ``theta_log``, ``gamma_log`` (N,), ``B_re``, ``B_im`` (N, D), ``C_re``, ``C_im`` (D, N),
    ``D`` (D,): 4 N D + 3 N + D, all real.
    """

    def __init__(
        self,
        d_model: int,
        d_hidden: int | None = None,
        r_min: float = 0.0,
        r_max: float = 1.0,
        max_phase: float = 2 * math.pi,
        negative_eigenvalues: bool = False,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        if d_hidden is None:
            d_hidden = d_model
        positive_int("d_hidden", d_hidden)
        _check_init(r_min, r_max, max_phase)
        self.d_hidden = d_hidden
        self.r_min, self.r_max, self.max_phase = r_min, r_max, max_phase
        self.negative_eigenvalues = flag("negative_eigenvalues", negative_eigenvalues)
        nu_log, theta_log, gamma_log = ring_init(
            d_hidden, r_min, r_max, max_phase, negative_eigenvalues
        )
        self.nu_log = nn.Parameter(nu_log)
        self.theta_log = nn.Parameter(theta_log)
        self.gamma_log = nn.Parameter(gamma_log)
        self.B_re = nn.Parameter(torch.randn(d_hidden, d_model) / math.sqrt(2 * d_model))
        self.B_im = nn.Parameter(torch.randn(d_hidden, d_model) / math.sqrt(2 * d_model))
        self.C_re = nn.Parameter(torch.randn(d_model, d_hidden) / math.sqrt(d_hidden))
        self.C_im = nn.Parameter(torch.randn(d_model, d_hidden) / math.sqrt(d_hidden))
        self.D = nn.Parameter(torch.randn(d_model))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_hidden={self.d_hidden}, r_min={self.r_min}, "
            f"r_max={self.r_max}, max_phase={self.max_phase:.4g}, "
            f"negative_eigenvalues={self.negative_eigenvalues}, mode={self.mode!r}"
        )

    def eigenvalues(self) -> torch.Tensor:
        """lambda (N,), complex: modulus exp(-exp(nu_log)) (or 2 that - 1), phase exp(theta_log)."""
        work = _real_work_dtype(self.nu_log.dtype)
        modulus = torch.exp(-torch.exp(self.nu_log.to(work)))
        if self.negative_eigenvalues:
            modulus = 2.0 * modulus - 1.0
        phase = torch.exp(self.theta_log.to(work))
        return torch.complex(modulus * torch.cos(phase), modulus * torch.sin(phase))

    def _coefficients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """a = lambda (broadcast over batch and time), b_t = gamma * (B x_t), complex."""
        n = self.d_hidden
        # rows (re_0, im_0, re_1, im_1, ...) of gamma * B: the GEMM's output pairs are complex
        scale = torch.exp(self.gamma_log)[:, None, None]
        w_b = (torch.stack((self.B_re, self.B_im), dim=1) * scale).reshape(2 * n, self.d_model)
        bx = F.linear(x, w_b).unflatten(-1, (n, 2))
        b = torch.view_as_complex(bx.to(_real_work_dtype(bx.dtype)))
        a = self.eigenvalues().expand(b.shape)
        return a, b

    def _readout(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Re(C h) + D * x, as one real GEMM over the (re, im) pairs of h."""
        w_c = torch.stack((self.C_re, -self.C_im), dim=-1).reshape(self.d_model, 2 * self.d_hidden)
        h_pairs = torch.view_as_real(h).flatten(-2).to(x.dtype)
        return torch.addcmul(F.linear(h_pairs, w_c), self.D, x)

    def _state_to_h(self, state: torch.Tensor) -> torch.Tensor:
        work = _real_work_dtype(state.dtype)
        return torch.complex(state[..., 0].to(work), state[..., 1].to(work))

    def _h_to_state(self, h: torch.Tensor) -> torch.Tensor:
        return torch.view_as_real(h).to(self._reference_tensor().dtype)

    def _init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        return torch.zeros(batch_size, self.d_hidden, 2, device=device, dtype=dtype)
