"""Titans' neural memory: the hand-written gradients against autograd, chunk size 1 against a
plain sequential gradient-descent memory written with torch.autograd, and the modes (and
``step``) equal for chunk sizes that do and do not divide the length, from states in the
middle of a chunk and with padding. Float64, so the forms differ only by rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from statewise import layers as L
from statewise.errors import ArgumentError
from statewise.ops.neural_memory import memory_grads

F64 = dict(rtol=1e-9, atol=1e-10)
D = 8


def make(depth: int, chunk_size: int, seed: int = 0, **kwargs) -> L.SequenceMixer:
    torch.manual_seed(seed)
    layer = L.get("titans", d_model=D, n_heads=2, depth=depth, chunk_size=chunk_size, **kwargs)
    return layer.double()


@pytest.mark.parametrize("depth", [1, 2])
def test_hand_gradients_equal_autograd(depth):
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3)] if depth == 1 else [(5, 3), (4, 5)]  # (out, in): keys 3, values 4
    weights = [torch.randn(2, 3, *s, generator=g, dtype=torch.float64) for s in shapes]
    k = torch.randn(2, 3, 1, 3, generator=g, dtype=torch.float64)
    v = torch.randn(2, 3, 1, 4, generator=g, dtype=torch.float64)
    factors = memory_grads(tuple(weights), k, v)
    for b in range(2):
        for h in range(3):
            ws = [w[b, h].clone().requires_grad_(True) for w in weights]
            out = k[b, h, 0]
            for i, w in enumerate(ws):
                out = w @ out if i + 1 == len(ws) else F.silu(w @ out)
            expected = torch.autograd.grad(((out - v[b, h, 0]) ** 2).sum(), ws)
            for (left, right), e in zip(factors, expected):
                hand = torch.outer(left[b, h, 0], right[b, h, 0])
                torch.testing.assert_close(hand, e, **F64)


def _sequential_memory(layer, x: torch.Tensor) -> torch.Tensor:
    """One sequence x (T, D) from the initial state: per token and head, the gradient of
    |M(k) - v|^2 at the current weights by torch.autograd, then momentum, forgetting, read."""
    heads, d = layer.n_heads, layer.head_dim
    weights = [[w[h].detach().clone() for w in layer.memory_init] for h in range(heads)]
    moments = [[torch.zeros_like(w) for w in ws] for ws in weights]
    ys = []
    with torch.no_grad():
        q_all = layer.q_proj(x).unflatten(-1, (heads, d))
        k_all = layer.k_proj(x).unflatten(-1, (heads, d))
        v_all = layer.v_proj(x).unflatten(-1, (heads, d))
        rates = layer.rate_proj(x).unflatten(-1, (3, heads))
    for t in range(x.shape[0]):
        outs = []
        for h in range(heads):
            q, k = (F.normalize(u[t, h], dim=0, eps=0.0) for u in (q_all, k_all))
            # l2norm with the layer's eps: x / sqrt(|x|^2 + 1e-6)
            q = q * q_all[t, h].norm() / torch.sqrt(q_all[t, h].norm() ** 2 + 1e-6)
            k = k * k_all[t, h].norm() / torch.sqrt(k_all[t, h].norm() ** 2 + 1e-6)
            theta = layer.max_lr * torch.sigmoid(rates[t, 0, h])
            eta, alpha = torch.sigmoid(rates[t, 1, h]), torch.sigmoid(rates[t, 2, h])
            ws = [w.requires_grad_(True) for w in weights[h]]
            out = k
            for i, w in enumerate(ws):
                out = w @ out if i + 1 == len(ws) else F.silu(w @ out)
            grads = torch.autograd.grad(((out - v_all[t, h]) ** 2).sum(), ws)
            with torch.no_grad():
                for i, grad in enumerate(grads):
                    moments[h][i] = eta * moments[h][i] - theta * grad
                    weights[h][i] = (1 - alpha) * ws[i] + moments[h][i]
                read = q
                for i, w in enumerate(weights[h]):
                    read = w @ read if i + 1 == len(ws) else F.silu(w @ read)
            outs.append(read)
        with torch.no_grad():
            o = torch.stack(outs)  # (H, d)
            ys.append(layer.o_proj(layer.o_norm(o).flatten()))
    return torch.stack(ys)


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("mode", ["recurrent", "chunk"])
def test_chunk_size_one_is_sequential_gradient_descent(depth, mode):
    layer = make(depth, chunk_size=1, max_lr=0.5)
    layer.mode = mode
    x = torch.randn(2, 9, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        y, _ = layer(x)
    for b in range(2):
        torch.testing.assert_close(y[b], _sequential_memory(layer, x[b]), **F64)


def _random_state(layer, batch: int, g: torch.Generator, pos: list[int]) -> dict:
    state = layer.init_state(batch)
    for key, t in state.items():
        if t.is_floating_point():
            state[key] = 0.3 * torch.randn(t.shape, generator=g, dtype=t.dtype)
    state["pos"] = torch.tensor(pos)
    return state


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("chunk_size", [1, 3, 4, 5, 16])
def test_modes_and_step_agree_for_any_chunk_size(depth, chunk_size):
    """T = 12: chunk sizes 1, 3, 4 divide it, 5 does not, 16 exceeds it; the rows start at
    positions 0, 2 and 7 (mid-chunk) and the third row is padded on both sides."""
    layer = make(depth, chunk_size)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 12, D, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[2, :2] = mask[2, 9:] = False
    state = _random_state(layer, 3, g, [0, 2, 7])
    results = {}
    for mode in layer.modes:
        layer.mode = mode
        results[mode] = layer(x, state, mask=mask)
    y_rec, s_rec = results["recurrent"]
    y_chunk, s_chunk = results["chunk"]
    real = mask.unsqueeze(-1).expand_as(y_rec)
    torch.testing.assert_close(y_chunk[real], y_rec[real], **F64)
    for key in s_rec:
        torch.testing.assert_close(s_chunk[key], s_rec[key], **F64, msg=key)
    # step by step over the unpadded rows
    s = {k: v[:2] for k, v in state.items()}
    for t in range(12):
        y_t, s = layer.step(x[:2, t], s)
        torch.testing.assert_close(y_t, y_rec[:2, t], **F64)
    for key in s:
        torch.testing.assert_close(s[key], s_rec[key][:2], **F64, msg=key)
    assert s_rec["pos"].tolist() == [12, 14, 14]


def test_chunk_size_is_part_of_the_function():
    """The same weights with chunk sizes 1 and 4 compute different outputs after the first
    token (the later tokens of a chunk take their gradients at the chunk's start weights)."""
    x = torch.randn(1, 8, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y1, _ = make(2, 1)(x)
    y4, _ = make(2, 4)(x)
    torch.testing.assert_close(y1[:, :1], y4[:, :1], **F64)  # the first token agrees
    assert (y1[:, 1:4] - y4[:, 1:4]).abs().amax(-1).min() > 1e-6


def test_masked_steps_carry_everything():
    layer = make(2, 3)
    g = torch.Generator().manual_seed(4)
    state = _random_state(layer, 2, g, [1, 5])
    x = torch.randn(2, 4, D, generator=g, dtype=torch.float64)
    for mode in layer.modes:
        layer.mode = mode
        _, final = layer(x, state, mask=torch.zeros(2, 4, dtype=torch.bool))
        for key in state:
            torch.testing.assert_close(final[key], state[key], **F64)


@pytest.mark.parametrize("forget_init", [0.5, 0.01])
def test_forget_init_is_the_forgetting_at_initialisation(forget_init):
    """With the rate projection's weights at zero, alpha is forget_init on every token; with
    a vanishing learning rate nothing is written, so after T tokens the memory is
    (1 - forget_init)^T M_0 (the state holds M - M_0)."""
    layer = make(1, 4, forget_init=forget_init, max_lr=1e-12)
    with torch.no_grad():
        layer.rate_proj.weight.zero_()
    # the bias was set in float32 at construction: alpha is forget_init to float32 rounding
    alpha = torch.sigmoid(layer.rate_proj.bias.detach()[2 * layer.n_heads :])
    torch.testing.assert_close(alpha, torch.full_like(alpha, forget_init), rtol=1e-6, atol=0)
    x = torch.randn(2, 12, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    _, state = layer(x)
    keep = (1 - alpha)[None, :, None, None]
    expected = (keep**12 - 1) * layer.memory_init[0].detach()
    torch.testing.assert_close(state["memory_1"], expected.expand(2, -1, -1, -1), rtol=0, atol=1e-9)


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, float("nan")])
def test_forget_init_outside_zero_one_is_refused(value):
    with pytest.raises(ArgumentError, match="forget_init"):
        L.get("titans", d_model=D, n_heads=2, forget_init=value)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_memory_stays_finite_on_long_text_at_initialisation(seed):
    """Gradients of a chunk are summed at its start weights, so text, whose tokens repeat,
    takes steps up to chunk_size times theta along one key: with max_lr 0.1 and the slow
    default forgetting the memory overflowed on 128 tokens of the built-in text in every
    seed (docs/models/titans.md). The defaults must read 2,048 tokens of it."""
    from statewise.models import build_model
    from statewise.models.config import ModelConfig
    from statewise.tasks.base import unpack_batch
    from statewise.tasks.config import DataConfig, build_task

    task = build_task(DataConfig(task="char_lm", seq_len=2048), 0)
    inputs, _, resets = unpack_batch(task.train_batch(0, 4))
    torch.manual_seed(seed)
    config = ModelConfig(layer="titans", d_model=64, n_layers=2, vocab_size=task.vocab_size)
    with torch.no_grad():
        logits = build_model(config)(inputs, resets=resets)  # NonFiniteError if it overflows
    assert bool(torch.isfinite(logits).all())
