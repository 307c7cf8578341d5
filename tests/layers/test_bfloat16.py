"""Under bfloat16 autocast every layer keeps its contract: the output comes back in the
input's dtype, the state in float32 (so it feeds the next forward and step), and the
recurrences run in float32 (statewise.ops.precision), so the error against float32 is that
of the bfloat16 projections around them and does not grow with the sequence length."""

from __future__ import annotations

import pytest
import torch

import statewise.layers as L
from statewise.ops.tree import tree_leaves

# bfloat16 keeps 8 mantissa bits: each rounding is up to 2^-9 = 2e-3 relative. A layer's
# output goes through an input projection, gates and an output projection rounded that way,
# so its error against float32, relative to the output's scale, is several of those; the
# tolerances are about twice the largest measured at T = 64 and 1024 over every mode
# (docs/training.md, "bfloat16"). A recurrence run in bfloat16 would add an error growing
# with T (a decay of 0.999 is 1.0 in bfloat16); the long-sequence test checks it stays put.
FAMILIES = {
    # diagonal recurrences: measured at most 1.0e-2
    "diagonal": (
        (
            "aaren",
            "hgrn",
            "lru",
            "mamba",
            "mingru",
            "minlstm",
            "rglru",
            "s4d",
            "paragru",
            "paralstm",
            "parallel_lmu",
        ),
        2e-2,
    ),
    # matrix states (chunkwise GEMMs): at most 3.6e-2 (retnet's recurrent mode)
    "matrix": (
        ("deltanet", "gated_deltanet", "gateloop", "hgrn2", "mamba2", "mlstm", "retnet", "rwkv"),
        6e-2,
    ),
    # classic cells run wholly in float32 (their fused oneDNN/numba paths take float32)
    "classic": (("gru", "lmu", "lstm", "rnn"), 1e-6),
    # continuous-time cells: the whole step is the recurrence, run in float32
    "continuous-time": (("cfc", "ltc"), 1e-6),
    # sLSTM's gates in bfloat16, its recurrence in float32: at most 1.8e-2
    "slstm": (("slstm",), 3e-2),
    # test-time memory (an MLP trained by gradient descent while reading): at most 2.0e-2
    "test-time memory": (("titans",), 6e-2),
    # block-recurrent attention (state vectors updated per block): at most 7.8e-3
    "block-recurrent attention": (("block_recurrent",), 3e-2),
    # softmax attention: at most 1.3e-2
    "attention": (("attention",), 3e-2),
}
TOLERANCE = {name: tol for names, tol in FAMILIES.values() for name in names}
CASES = [(n, m) for n in L.names() for m in L.get(n, d_model=8).modes]
D = 32


def test_every_layer_has_a_family():
    assert set(TOLERANCE) == set(L.names())


def perturbed(name: str) -> L.SequenceMixer:
    torch.manual_seed(0)
    layer = L.get(name, d_model=D)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # off the init (rwkv's output projection starts at zero)
        for p in layer.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return layer


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.detach(), ref.detach()
    return float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-6))


@pytest.mark.parametrize("name,mode", CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_autocast_keeps_float32_at_the_boundary_within_tolerance(name, mode):
    layer = perturbed(name)
    layer.mode = mode
    g = torch.Generator().manual_seed(2)
    x, x_next = torch.randn(2, 48, D, generator=g), torch.randn(2, 16, D, generator=g)
    y32, s32 = layer(x)
    y32_next, _ = layer(x_next, s32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = layer(x)
        assert y.dtype == torch.float32
        assert all(t.dtype == r.dtype for t, r in zip(tree_leaves(state), tree_leaves(s32)))
        y_next, _ = layer(x_next, state)  # the state feeds the next forward ...
        y_t, _ = layer.step(x_next[:, 0], state)  # ... and the next step
    assert y_next.dtype == y_t.dtype == torch.float32
    tol = TOLERANCE[name]
    assert relative_error(y, y32) <= tol
    assert relative_error(y_next, y32_next) <= tol


@pytest.mark.parametrize("name", ["mingru", "mamba", "retnet", "lstm"])
def test_long_sequences_stay_within_tolerance(name):
    """Over 2,048 steps the error of the last 1,024 stays within the family's tolerance: the
    state is float32, so the recurrence accumulates in float32 (the numba kernels and
    oneDNN's cells, which take no bfloat16, get float32 inputs from ops.precision)."""
    layer = perturbed(name)
    x = torch.randn(1, 2048, D, generator=torch.Generator().manual_seed(3))
    y32, _ = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = layer(x)
    tail = slice(1024, None)
    assert relative_error(y[:, tail], y32[:, tail]) <= TOLERANCE[name]
