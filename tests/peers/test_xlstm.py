"""Our mLSTM and sLSTM against the xlstm package (NX-AI), pure-PyTorch backends on CPU.

What maps, and how:

- The mLSTM cell, our ``statewise.ops.mlstm`` against the xlstm package's original vanilla
  backends (``xlstm.blocks.mlstm.backends``: ``parallel_stabilized_simple``,
  ``recurrent_step_stabilized_simple``, ``chunkwise_simple``). They take unscaled keys and
  apply 1/sqrt(d) themselves (the recurrent and parallel ones to k, as we do; the chunkwise
  one to q, so its state is sqrt(d) times ours); gates are passed as pre-activations with
  log f = logsigmoid(f~). They add eps = 1e-6 to the denominator max(|q n|, e^-m); with
  eps = 0 they agree with ours to float64 rounding (the equations are the same), with their
  default eps in float32 to a stated tolerance.
- The whole mLSTM layer against ``xlstm.xlstm_large`` (xLSTM-7B's layer over mlstm_kernels'
  native chunkwise / parallel / step kernels): the same structure as ours (q, k, v, o, i, f
  projections of x, per-head layer norm, sigmoid output gate, out projection, gate soft-cap
  15), so every weight copies over one to one. Its kernels scale q instead of k, so its C and
  n are sqrt(d_k) times ours.
- NOT mapped: the 2024 paper's mLSTM *block* (``xlstm.blocks.mlstm.layer.mLSTMLayer``: up-
  projection, causal conv, learnable skip, SiLU(z) gate, gates computed from [q, k, v]).
  Our mixer deliberately leaves those parts to statewise's block; the part that maps is
  the cell, tested through the backends above (docs/models/mlstm.md).
- The whole sLSTM layer against ``xlstm.blocks.slstm.layer.sLSTMLayer`` with the vanilla
  backend and no conv (``conv1d_kernel_size=0``; its conv is optional and ours has none):
  its block-diagonal ("headwise") input projections become block-diagonal rows of our dense
  ``in_proj``, its cell bias and recurrent kernel re-laid out, its group-norm weight w (used
  as 1 + w) becomes our norm_weight. Note the peer's layer feeds the output of its module
  named ``fgate`` into the input gate and ``igate`` into the forget gate; we copy by role.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("xlstm", reason="peer package xlstm is not installed")

from xlstm.blocks.mlstm.backends import (  # noqa: E402
    chunkwise_simple,
    parallel_stabilized_simple,
    recurrent_step_stabilized_simple,
)
from xlstm.blocks.slstm.layer import sLSTMLayer, sLSTMLayerConfig  # noqa: E402

import statewise.layers as L  # noqa: E402
from statewise.ops.mlstm import MODES, mlstm  # noqa: E402

B, NH, DH, T = 2, 3, 8, 16


def _randn(*shape, gen, dtype):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def _cell_problem(dtype, seed=0):
    """q, k (unscaled), v, input and forget gate pre-activations (B, NH, T), a random state."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (_randn(B, NH, T, DH, gen=gen, dtype=dtype) for _ in range(3))
    ig = _randn(B, NH, T, gen=gen, dtype=dtype)
    fg = _randn(B, NH, T, gen=gen, dtype=dtype) + 2.0
    c0 = _randn(B, NH, DH, DH, gen=gen, dtype=dtype)
    n0 = _randn(B, NH, DH, gen=gen, dtype=dtype)
    m0 = _randn(B, NH, gen=gen, dtype=dtype)
    return q, k, v, ig, fg, (c0, n0, m0)


# float64 with eps = 0: the same equations, so only rounding differs.
EXACT = dict(rtol=1e-10, atol=1e-12)
# float32 with the peer's eps = 1e-6 in the denominator: eps changes h by a relative
# eps * e^m / max(|q n|_true, 1) <= 1e-6 * e^{max m}; here m stays below 3.5, so <= 3.3e-5;
# float32 rounding over T = 16 steps of d = 8 dot products (outputs up to ~15, the
# denominator partly cancels) adds ~1e-5. Measured: at most 1.5e-5 relative to max(1, |h|).
# 1e-4 leaves a 7x margin and still catches any wrong term (O(1e-1) or more).
F32 = dict(rtol=1e-4, atol=1e-4)
CASES = [(torch.float64, 0.0, EXACT), (torch.float32, 1e-6, F32)]
CASE_IDS = ["float64-eps0", "float32-peer-eps"]


@pytest.mark.parametrize("dtype,eps,tol", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("mode", MODES)
def test_mlstm_cell_matches_parallel_stabilized_simple(mode, dtype, eps, tol):
    q, k, v, ig, fg, _ = _cell_problem(dtype)
    want = parallel_stabilized_simple(q, k, v, ig[..., None], fg[..., None], eps=eps)
    got, _ = mlstm(q, k / math.sqrt(DH), v, ig, F.logsigmoid(fg), mode=mode, chunk_size=5)
    torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("dtype,eps,tol", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("mode", MODES)
def test_mlstm_cell_matches_recurrent_step_stabilized_simple(mode, dtype, eps, tol):
    """From a random state, with the state compared too: the same (C, n, m) convention."""
    q, k, v, ig, fg, (c, n, m) = _cell_problem(dtype, seed=1)
    got, (c_ours, n_ours, m_ours) = mlstm(
        q, k / math.sqrt(DH), v, ig, F.logsigmoid(fg), (c, n, m), mode=mode, chunk_size=5
    )
    state = (c, n[..., None], m[..., None, None])
    hs = []
    for t in range(T):
        sl = slice(t, t + 1)
        h, state = recurrent_step_stabilized_simple(
            *state,
            q[:, :, sl].clone(),  # the peer squeezes q, k, v in place
            k[:, :, sl].clone(),
            v[:, :, sl].clone(),
            ig[:, :, sl, None],
            fg[:, :, sl, None],
            eps=eps,
        )
        hs.append(h.squeeze(2))
    torch.testing.assert_close(got, torch.stack(hs, dim=2), **tol)
    torch.testing.assert_close(c_ours, state[0], **tol)
    torch.testing.assert_close(n_ours, state[1].squeeze(-1), **tol)
    torch.testing.assert_close(m_ours, state[2].view(B, NH), **tol)


@pytest.mark.parametrize("dtype,eps,tol", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("mode", MODES)
def test_mlstm_cell_matches_chunkwise_simple(mode, dtype, eps, tol):
    """The peer's chunkwise form scales q, not k: its C and n are sqrt(d) times ours."""
    q, k, v, ig, fg, (c, n, m) = _cell_problem(dtype, seed=2)
    root = math.sqrt(DH)
    got, (c_ours, n_ours, m_ours) = mlstm(
        q, k / root, v, ig, F.logsigmoid(fg), (c, n, m), mode=mode, chunk_size=3
    )
    want, (c_peer, n_peer, m_peer) = chunkwise_simple(
        q, k, v, ig, fg, c * root, n * root, m, chunk_size=4, return_last_state=True, eps=eps
    )
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(c_ours * root, c_peer, **tol)
    torch.testing.assert_close(n_ours * root, n_peer, **tol)
    torch.testing.assert_close(m_ours, m_peer.view(B, NH), **tol)


# ------------------------------------------------------------ mLSTM layer, xLSTM-7B


def _xlstm_large_pair(kernel: str, mode: str, chunk_size: int, seed: int = 0):
    """xlstm_large's mLSTMLayer (randomised) and our mLSTM with its weights."""
    pytest.importorskip("mlstm_kernels", reason="xlstm_large needs mlstm_kernels")
    from mlstm_kernels.torch.backend_module import mLSTMBackendConfig
    from xlstm.xlstm_large.model import mLSTMLayer, mLSTMLayerConfig

    d_model, heads = 24, 3
    torch.manual_seed(seed)
    backend = mLSTMBackendConfig(
        chunkwise_kernel=kernel,
        mode=mode,
        chunk_size=chunk_size,
        return_last_states="parallel" not in kernel,
    )
    peer = mLSTMLayer(
        mLSTMLayerConfig(embedding_dim=d_model, num_heads=heads, mlstm_backend=backend)
    )
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in peer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    ours = L.get("mlstm", d_model=d_model, n_heads=heads, gate_soft_cap=peer.config.gate_soft_cap)
    assert (ours.d_k, ours.d_v) == (peer.qk_dim // heads, peer.v_dim // heads)
    with torch.no_grad():
        for mine, theirs in (
            (ours.q_proj, peer.q),
            (ours.k_proj, peer.k),
            (ours.v_proj, peer.v),
            (ours.o_proj, peer.ogate_preact),
            (ours.out_proj, peer.out_proj),
        ):
            mine.weight.copy_(theirs.weight)
        for mine, theirs in ((ours.i_proj, peer.igate_preact), (ours.f_proj, peer.fgate_preact)):
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
        ours.norm_weight.copy_(peer.multihead_norm.weight)
    return peer, ours


def _peer_state(ours_state: dict, d_k: int) -> tuple[torch.Tensor, ...]:
    root = math.sqrt(d_k)
    return ours_state["C"] * root, ours_state["n"] * root, ours_state["m"][..., None]


# float32 on both sides; the peer adds eps = 1e-6 to the mLSTM denominator (see F32 above;
# the per-head norm and the output projection make it smaller still) and chunks differently.
# Measured: at most 1.9e-6 absolute (outputs up to ~3.5); 1e-5 + 1e-4 relative is a 5x margin.
LAYER_TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_mlstm_layer_matches_xlstm_large(mode):
    """Training mode, native chunkwise kernel (chunk 8), T = 24, final state compared too.
    (The peer's layer cannot run its parallel kernels: they return no state and the layer
    unpacks one; the parallel kernel itself is compared in the next test.)"""
    peer, ours = _xlstm_large_pair("chunkwise--native_autograd", "train", chunk_size=8)
    ours.mode = mode
    ours.chunk_size = 5
    x = torch.randn(2, 24, 24, generator=torch.Generator().manual_seed(3))
    y, state = ours(x)
    y_peer, state_peer = peer(x)
    torch.testing.assert_close(y, y_peer, **LAYER_TOL)
    for a, b in zip(_peer_state(state, ours.d_k), state_peer):
        torch.testing.assert_close(a, b, **LAYER_TOL)


@pytest.mark.parametrize("dtype,eps,tol", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("mode", MODES)
def test_mlstm_cell_matches_mlstm_kernels_native_parallel(mode, dtype, eps, tol):
    """mlstm_kernels' native parallel forward (xLSTM-7B's kernel family; it scales q)."""
    pytest.importorskip("mlstm_kernels", reason="peer package mlstm_kernels is not installed")
    from mlstm_kernels.torch.parallel.native.fw import mlstm_parallel_fw

    q, k, v, ig, fg, _ = _cell_problem(dtype, seed=6)
    want, _, _ = mlstm_parallel_fw(q, k, v, ig, fg, eps=eps)
    got, _ = mlstm(q, k / math.sqrt(DH), v, ig, F.logsigmoid(fg), mode=mode, chunk_size=5)
    torch.testing.assert_close(got, want, **tol)


def test_mlstm_layer_streaming_matches_xlstm_large_inference():
    """Prefill of an odd length from a state, then token by token, against the peer's
    inference mode (chunkwise with padding for the prefill, its step kernel for S = 1)."""
    peer, ours = _xlstm_large_pair("chunkwise--native_autograd", "inference", chunk_size=8)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 20, 24, generator=gen)
    y1, state = ours(x[:, :7])
    y1_peer, state_peer = peer(x[:, :7])
    torch.testing.assert_close(y1, y1_peer, **LAYER_TOL)
    y2, state = ours(x[:, 7:16], state)
    y2_peer, state_peer = peer(x[:, 7:16], state_peer)
    torch.testing.assert_close(y2, y2_peer, **LAYER_TOL)
    for t in range(16, 20):
        y_t, state = ours.step(x[:, t], state)
        y_t_peer, state_peer = peer(x[:, t : t + 1], state_peer)
        torch.testing.assert_close(y_t, y_t_peer[:, 0], **LAYER_TOL)
    for a, b in zip(_peer_state(state, ours.d_k), state_peer):
        torch.testing.assert_close(a, b, **LAYER_TOL)


# ------------------------------------------------------------------- sLSTM layer


def _slstm_pair(seed: int = 0):
    d_model, heads = 16, 4
    torch.manual_seed(seed)
    peer = sLSTMLayer(
        sLSTMLayerConfig(
            embedding_dim=d_model,
            num_heads=heads,
            conv1d_kernel_size=0,
            backend="vanilla",
            dtype="float32",
        )
    )
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # the peer's recurrent kernel starts at zero: make every weight count
        for p in peer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    ours = L.get("slstm", d_model=d_model, n_heads=heads)
    d = d_model // heads
    cell = peer.slstm_cell

    def dense(headwise: torch.Tensor) -> torch.Tensor:
        """(H, out, in) per-head blocks -> the block-diagonal (D, D) matrix."""
        return torch.block_diag(*headwise.unbind(0))

    with torch.no_grad():
        # rows i, f, z, o; the peer feeds its `fgate` module into i and `igate` into f
        ours.in_proj.weight.copy_(
            torch.cat([dense(m.weight) for m in (peer.fgate, peer.igate, peer.zgate, peer.ogate)])
        )
        ours.in_proj.bias.copy_(cell._bias_.reshape(-1))  # internal layout (gate, head, unit)
        # internal recurrent kernel (H, 4 d, d): [head, gate * d + out, in]
        ours.recurrent_weight.copy_(cell._recurrent_kernel_.view(heads, 4, d, d).transpose(0, 1))
        ours.norm_weight.copy_(1.0 + peer.group_norm.weight)  # the peer scales by 1 + w
    return peer, ours


# float32 on both sides, the same operations in a different order (their recurrent matmul is
# per head in another layout). Measured: at most 2.9e-6 absolute, 4.8e-7 relative to
# max(1, |y|) (the per-head norm makes outputs O(1), up to ~2.5); 1e-5 + 1e-5 relative is a
# 3.5x margin or more over T = 24 steps.
SLSTM_TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("start", ["zero", "random"])
def test_slstm_layer_matches_xlstm_vanilla(start):
    peer, ours = _slstm_pair()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 24, 16, generator=gen)
    if start == "zero":
        state = ours.init_state(3)
    else:
        n = 1.0 + 2.0 * torch.rand(3, 16, generator=gen)
        state = {
            "h": torch.rand(3, 16, generator=gen) * 1.8 - 0.9,
            "c": n * (torch.rand(3, 16, generator=gen) * 1.8 - 0.9),
            "n": n,
            "m": torch.randn(3, 16, generator=gen),
        }
    y, final = ours(x, state)
    peer_state = torch.stack([state[key] for key in ("h", "c", "n", "m")])
    y_peer, peer_final = peer(x, slstm_state=peer_state, return_last_state=True)
    torch.testing.assert_close(y, y_peer, **SLSTM_TOL)
    for key, theirs in zip(("h", "c", "n", "m"), peer_final["slstm_state"]):
        torch.testing.assert_close(final[key], theirs, **SLSTM_TOL)
    # token by token from the same state
    s, ys = state, []
    for t in range(x.shape[1]):
        y_t, s = ours.step(x[:, t], s)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, dim=1), y_peer, **SLSTM_TOL)
