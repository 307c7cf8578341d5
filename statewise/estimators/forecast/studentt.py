"""Quantiles of Student's t distribution in plain PyTorch (``torch.distributions.StudentT``
has no inverse CDF, and scipy is not a dependency).

For t >= 0 the substitution u = sqrt(nu) tan(theta) turns the CDF of the standard t with
nu degrees of freedom into an integral over a bounded interval:

    F(t) = 1/2 + c(nu) G(phi),   G(phi) = integral_0^phi cos(theta)^(nu - 1) d theta,
    phi = atan(t / sqrt(nu)),    c(nu) = Gamma((nu + 1) / 2) / (sqrt(pi) Gamma(nu / 2)).

The integrand is smooth on [0, phi] for any phi < pi/2, so G is computed by 64-point
Gauss-Legendre quadrature. The quantile t_p for p > 1/2 solves c G(phi) = p - 1/2 by Newton's
method in phi, started at the normal quantile's phi_0 = atan(z_p / sqrt(nu)), which lies
below the root because the t has heavier tails (t_p >= z_p for p > 1/2): for nu >= 1, G is
increasing and concave on [0, pi/2) (G' = cos^(nu - 1) decreases), so every tangent lies
above G and the iterates increase monotonically to the root without overshooting. Then
t_p = sqrt(nu) tan(phi), and t_p = -t_(1-p) for p < 1/2 (symmetry). All in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from statewise.errors import ArgumentError

_NODES, _WEIGHTS = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(64))
_MAX_ITERATIONS = 100
_TOLERANCE = 1e-13


def studentt_cdf_integral(phi: torch.Tensor, df: torch.Tensor) -> torch.Tensor:
    """G(phi) = integral_0^phi cos(theta)^(df - 1) d theta (float64), elementwise."""
    theta = (phi[..., None] / 2) * (_NODES + 1)
    values = torch.cos(theta).clamp_min(0) ** (df[..., None] - 1)
    return (phi / 2) * (values * _WEIGHTS).sum(-1)


def studentt_log_pdf(t: torch.Tensor, df: torch.Tensor) -> torch.Tensor:
    """log f(t) of the standard Student-t: log c(df) - log(df) / 2 - (df + 1) / 2 log(1 + t^2 / df)
    (written out: torch.distributions.StudentT validates NaN parameters by raising)."""
    return torch.log(_constant(df)) - 0.5 * torch.log(df) - (df + 1) / 2 * torch.log1p(t**2 / df)


def studentt_cdf(t: torch.Tensor, df: torch.Tensor) -> torch.Tensor:
    """F(t) of the standard Student-t with ``df`` >= 1 degrees of freedom (float64)."""
    t, df = torch.broadcast_tensors(torch.as_tensor(t).double(), torch.as_tensor(df).double())
    phi = torch.atan(t.abs() / df.sqrt())
    return 0.5 + torch.sign(t) * _constant(df) * studentt_cdf_integral(phi, df)


def _constant(df: torch.Tensor) -> torch.Tensor:
    """c(df) = Gamma((df + 1) / 2) / (sqrt(pi) Gamma(df / 2))."""
    return torch.exp(torch.lgamma((df + 1) / 2) - torch.lgamma(df / 2)) / math.sqrt(math.pi)


def studentt_icdf(p: torch.Tensor, df: torch.Tensor) -> torch.Tensor:
    """The p-quantile of the standard Student-t with ``df`` >= 1 degrees of freedom
    (broadcast together; float64). ``p`` must lie in (0, 1)."""
    p, df = torch.broadcast_tensors(torch.as_tensor(p).double(), torch.as_tensor(df).double())
    if not ((p > 0) & (p < 1)).all():
        raise ArgumentError("p must lie strictly between 0 and 1")
    if not (df >= 1).all():
        raise ArgumentError("df must be >= 1 (the quantile solver needs a concave CDF)")
    goal = (p - 0.5).abs() / _constant(df)  # G(phi) at the root
    phi = torch.atan(torch.special.ndtri(torch.maximum(p, 1 - p)) / df.sqrt())
    for _ in range(_MAX_ITERATIONS):
        gap = goal - studentt_cdf_integral(phi, df)
        if bool((gap.abs() <= _TOLERANCE * goal.clamp_min(1)).all()):
            break
        slope = torch.cos(phi).clamp_min(0) ** (df - 1)
        phi = (phi + gap / slope.clamp_min(1e-300)).clamp(0, math.pi / 2 - 1e-12)
    return torch.sign(p - 0.5) * df.sqrt() * torch.tan(phi)
