"""Our LRU against the LRU of the lru-pytorch package (module LRU_pytorch), weights copied.

The peer keeps B and C as complex parameters and D as a full (out, in) matrix; ours keeps
real and imaginary parts as separate real parameters and D as a diagonal (the paper's
D * x). So the peer gets complex(B_re, B_im), complex(C_re, C_im) and diag(D); nu_log,
theta_log and gamma_log are the same parameters on both sides. The peer runs its own
per-step loop over each sequence from a zero state (it resets its state after every batch
row), so we compare from a zero state.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("LRU_pytorch", reason="peer package lru-pytorch is not installed")

from LRU_pytorch import LRU as PeerLRU  # noqa: E402

import statewise.layers as L  # noqa: E402

D, N, B, T = 12, 10, 3, 40
# float32 on both sides, T = 40 steps of a complex multiply-add and a D x N readout: a few
# hundred roundings of 6e-8 each on outputs of size ~5. Measured: at most 1.3e-6 absolute.
# 1e-5 (relative and absolute) is a 10x margin; a wrong term would be O(1e-1).
TOL = dict(rtol=1e-5, atol=1e-5)


def _pair(mode: str, seed: int = 0, **kwargs) -> tuple[L.SequenceMixer, torch.nn.Module]:
    torch.manual_seed(seed)
    ours = L.get("lru", d_model=D, d_hidden=N, mode=mode, **kwargs)
    peer = PeerLRU(D, D, N)
    with torch.no_grad():
        for name in ("nu_log", "theta_log", "gamma_log"):
            getattr(peer, name).copy_(getattr(ours, name))
        peer.B.copy_(torch.complex(ours.B_re, ours.B_im))
        peer.C.copy_(torch.complex(ours.C_re, ours.C_im))
        peer.D.copy_(torch.diag(ours.D))
    return ours, peer


@pytest.mark.parametrize("mode", ["recurrent", "scan"])
@pytest.mark.parametrize(
    "init", [{}, {"r_min": 0.9, "r_max": 0.999, "max_phase": math.pi / 10}], ids=["ring", "slow"]
)
def test_forward_equals_peer(mode, init):
    ours, peer = _pair(mode, **init)
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y_peer = peer(x)
        y, _ = ours(x)
    torch.testing.assert_close(y, y_peer, **TOL)


def test_step_equals_peer():
    ours, peer = _pair("recurrent")
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y_peer = peer(x)
        state, ys = None, []
        for t in range(T):
            y_t, state = ours.step(x[:, t], state)
            ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, dim=1), y_peer, **TOL)


def test_ring_init_matches_peer_distribution():
    """Same ring law for |lambda| and the phase: compare sorted draws of 4096 eigenvalues
    (the largest gap between the two empirical CDFs, a two-sample KS distance, is ~0.03
    for equal laws at this size; 0.06 would reject a different ring)."""
    n, r_min, r_max, max_phase = 4096, 0.5, 0.99, math.pi
    torch.manual_seed(3)
    ours = L.get("lru", d_model=4, d_hidden=n, r_min=r_min, r_max=r_max, max_phase=max_phase)
    peer = PeerLRU(4, 4, n, rmin=r_min, rmax=r_max, max_phase=max_phase)
    grid = torch.linspace(0, 1, 201)

    def ks(a: torch.Tensor, b: torch.Tensor) -> float:
        lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
        points = lo + grid * (hi - lo)
        cdf = lambda s: (s[None, :] <= points[:, None]).double().mean(1)  # noqa: E731
        return (cdf(a) - cdf(b)).abs().max().item()

    with torch.no_grad():
        for name in ("nu_log", "theta_log", "gamma_log"):
            assert ks(getattr(ours, name), getattr(peer, name)) < 0.06, name
        modulus = ours.eigenvalues().abs()
        assert r_min <= modulus.min() and modulus.max() <= r_max + 1e-6
        torch.testing.assert_close(
            torch.exp(ours.gamma_log), torch.sqrt(1 - modulus**2), rtol=1e-4, atol=1e-6
        )
