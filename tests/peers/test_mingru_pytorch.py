"""Our minGRU and minLSTM against lucidrains' minGRU-pytorch, with copied weights.

The peer's cells are the paper's log-space variants (appendix B.3): the candidate is
g(W_h x) with g(u) = u + 0.5 for u >= 0 and sigmoid(u) for u < 0, the state must stay
positive, and sequences of length > 1 run Heinsen's log-space scan. Our cells are the plain
ones (candidate W_h x + b_h, any sign). The two agree where g is affine: with inputs
x >= 0 and candidate weights W_h >= 0, W_h x >= 0 and g(W_h x) = W_h x + 0.5, which is our
candidate with bias b_h = 0.5 (and gate biases 0; the peer has no biases). So we copy the
peer's weights into ours that way, keep x >= 0 and the initial state > 0, and compare.

What maps: minGRU parallel (with and without an initial state), minGRU step, minLSTM
parallel from a zero state, minLSTM step. What does not: the peer's minLSTM parallel
branch with an initial state applies g to the already-activated previous hidden state
(it starts from g(h_0) = h_0 + 0.5 instead of h_0), a bug we do not reproduce or test.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("minGRU_pytorch", reason="peer package mingru-pytorch is not installed")

from minGRU_pytorch.minGRU import minGRU as PeerMinGRU  # noqa: E402
from minGRU_pytorch.minLSTM import minLSTM as PeerMinLSTM  # noqa: E402

import statewise.layers as L  # noqa: E402

D, B, T = 16, 3, 64
# float32 on both sides. The peer's log-space scan (cumsum of log-coefficients, then
# logcumsumexp, then exp) has a relative error of about 1e-7 x |sum log a| (references.md);
# here |sum log a| reaches ~50 over T = 64, so ~5e-6; measured: at most 8e-6 absolute on
# outputs of size ~2. 2e-5 relative plus 2e-5 absolute (~6e-5 here) leaves a 7x margin and
# still catches any wrong term, which is O(1e-2) or more.
TOL = dict(rtol=2e-5, atol=2e-5)


def _peer(cls, expansion: float, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    peer = cls(D, expansion_factor=expansion)
    with torch.no_grad():  # candidate rows (the first chunk) non-negative: g is affine there
        w = peer_in_proj(peer).weight
        h = w.shape[0] // (3 if cls is PeerMinLSTM else 2)
        w[:h] = w[:h].abs()
    return peer


def peer_in_proj(peer: torch.nn.Module) -> torch.nn.Linear:
    if isinstance(peer, PeerMinLSTM):
        return peer.to_hidden_and_f_i_gate
    return peer.to_hidden_and_gate


def _ours(name: str, peer: torch.nn.Module, expansion: float) -> L.SequenceMixer:
    """Our layer with the peer's weights: the peer's chunks (hidden, gate[s]) become our rows
    (gate[s], candidate), the candidate bias is 0.5 (= g(u) - u for u >= 0), the rest 0."""
    layer = L.get(name, d_model=D, expand=expansion)
    w = peer_in_proj(peer).weight
    n = layer.d_hidden
    hidden, gates = w[:n], w[n:]
    with torch.no_grad():
        layer.to_gate_hidden.weight.copy_(torch.cat([gates, hidden]))
        layer.to_gate_hidden.bias.zero_()
        layer.to_gate_hidden.bias[-n:] = 0.5
        if layer.out_proj is not None:
            layer.out_proj.weight.copy_(peer.to_out.weight)
        else:
            assert isinstance(peer.to_out, torch.nn.Identity)
    return layer


def _inputs(length: int = T, seed: int = 1) -> torch.Tensor:
    return torch.rand(B, length, D, generator=torch.Generator().manual_seed(seed))


def _positive_state(n: int, seed: int = 2) -> torch.Tensor:
    return 0.1 + torch.rand(B, n, generator=torch.Generator().manual_seed(seed))


PAIRS = [("mingru", PeerMinGRU), ("minlstm", PeerMinLSTM)]


@pytest.mark.parametrize("mode", ["recurrent", "scan"])
@pytest.mark.parametrize("expansion", [1.0, 2.0])
@pytest.mark.parametrize("name,peer_cls", PAIRS, ids=[p[0] for p in PAIRS])
def test_parallel_from_zero_state(name, peer_cls, expansion, mode):
    peer = _peer(peer_cls, expansion)
    layer = _ours(name, peer, expansion)
    layer.mode = mode
    x = _inputs()
    with torch.no_grad():
        y_peer, h_peer = peer(x, return_next_prev_hidden=True)
        y, h = layer(x)
    torch.testing.assert_close(y, y_peer, **TOL)
    torch.testing.assert_close(h, h_peer[:, 0], **TOL)


@pytest.mark.parametrize("expansion", [1.0, 2.0])
def test_mingru_parallel_from_a_given_state(expansion):
    peer = _peer(PeerMinGRU, expansion)
    layer = _ours("mingru", peer, expansion)
    x, h0 = _inputs(), _positive_state(layer.d_hidden)
    with torch.no_grad():
        y_peer, h_peer = peer(x, h0.unsqueeze(1), return_next_prev_hidden=True)
        y, h = layer(x, h0)
    torch.testing.assert_close(y, y_peer, **TOL)
    torch.testing.assert_close(h, h_peer[:, 0], **TOL)


@pytest.mark.parametrize("expansion", [1.0, 2.0])
@pytest.mark.parametrize("name,peer_cls", PAIRS, ids=[p[0] for p in PAIRS])
def test_step_by_step(name, peer_cls, expansion):
    """The peer's length-1 branch (exact arithmetic, no log space) against our step()."""
    peer = _peer(peer_cls, expansion)
    layer = _ours(name, peer, expansion)
    x = _inputs(16)
    h_peer = _positive_state(layer.d_hidden).unsqueeze(1)
    h = h_peer[:, 0].clone()
    with torch.no_grad():
        for t in range(x.shape[1]):
            y_peer, h_peer = peer(x[:, t : t + 1], h_peer, return_next_prev_hidden=True)
            y, h = layer.step(x[:, t], h)
            # both sides are the same handful of float32 operations per step
            torch.testing.assert_close(y, y_peer[:, 0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(h, h_peer[:, 0], rtol=1e-5, atol=1e-6)
