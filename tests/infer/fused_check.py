"""What every fused decode step is tested for (tests/infer/test_fused*.py use these).

- :func:`check_against_step`: FusedDecoder.step equals model.step over several steps of
  a batch of rows fed their own greedy tokens, from a non-zero state: in float64 to
  1e-10 relative (the same math in another order: rounding ~1e-16 per operation), and in
  float32 to 2e-5 relative (torch's vectorised exp/tanh/erf differ from libm's by a few
  ulp, and reductions run in another order; measured differences are 1e-7 to 2e-6).
- :func:`check_batch_invariant`: in float32, a row's logits and state are bit-identical
  whether it is stepped alone or among other rows.
"""

from __future__ import annotations

import torch

from statewise.infer.fused import FusedDecoder
from statewise.models import ModelConfig, build_model
from statewise.ops.tree import tree_leaves, tree_map

VOCAB = 64
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5}


def make_model(layer: str, dtype: torch.dtype, **config) -> torch.nn.Module:
    """A 2-block model moved off its initialisation (zero-initialised projections, such as
    rwkv's, would hide whole terms of a step)."""
    torch.manual_seed(0)
    config = {"d_model": 32, "n_layers": 2, "vocab_size": VOCAB, **config}
    model = build_model(ModelConfig(layer=layer, **config))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.to(dtype).eval()


def _warm_state(model, rows: int):
    """The state after a short random prompt per row (so no term starts at zero)."""
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, VOCAB, (rows, 5), generator=g)
    with torch.no_grad():
        _, state = model(ids, return_state=True)
    return state


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    if b.numel() == 0:  # an empty leaf (a conv window of width 1)
        return 0.0 if a.numel() == 0 else float("inf")
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def check_against_step(layer: str, dtype: torch.dtype, steps: int = 6, **config) -> float:
    """The worst relative difference of logits and state leaves over ``steps`` steps of
    4 rows; asserts it is within TOLERANCE[dtype]. Returns it."""
    model = make_model(layer, dtype, **config)
    fused = FusedDecoder(model)
    state = _warm_state(model, 4)
    fused_state = tree_map(lambda t: t.clone(), state)
    ids = torch.tensor([0, 7, 33, VOCAB - 1])
    worst = 0.0
    with torch.no_grad():
        for _ in range(steps):
            logits, state = model.step(ids, state)
            fused_logits, fused_state = fused.step(ids, fused_state)
            worst = max(worst, relative_error(fused_logits, logits))
            for ours, ref in zip(tree_leaves(fused_state), tree_leaves(state)):
                assert ours.shape == ref.shape and ours.dtype == ref.dtype
                worst = max(worst, relative_error(ours, ref))
            ids = logits.argmax(-1)
    assert worst <= TOLERANCE[dtype], f"{layer} {config}: {worst:.2e} > {TOLERANCE[dtype]:.0e}"
    return worst


def check_batch_invariant(layer: str, **config) -> None:
    """Row 2 of 7 stepped among the others and alone: the same bits, logits and state."""
    model = make_model(layer, torch.float32, **config)
    fused = FusedDecoder(model)
    state = _warm_state(model, 7)
    ids = torch.tensor([3, 9, 27, 81 % VOCAB, 5, 6, 1])
    alone_state = tree_map(lambda t: t[2:3].clone(), state)
    with torch.no_grad():
        for _ in range(4):
            logits, state = fused.step(ids, state)
            alone, alone_state = fused.step(ids[2:3], alone_state)
            assert torch.equal(alone[0], logits[2])
            for one, many in zip(tree_leaves(alone_state), tree_leaves(state)):
                assert torch.equal(one[0], many[2])
            ids = logits.argmax(-1)
