"""Attention starts a forward given no state from zero views (``_fresh_state``); what it
returns must not depend on that, and must be real tensors."""

from __future__ import annotations

import torch

from statewise.layers.attention import Attention


def _layer() -> Attention:
    torch.manual_seed(0)
    return Attention(16, n_heads=2, max_len=32).double()


def test_no_state_equals_the_initial_state():
    layer = _layer()
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    y_none, s_none = layer(x)
    y_init, s_init = layer(x, layer.init_state(3))
    torch.testing.assert_close(y_none, y_init, rtol=0, atol=0)
    for key in ("k", "v", "pos"):
        torch.testing.assert_close(s_none[key], s_init[key], rtol=0, atol=0)
    assert s_none["k"].is_contiguous() and s_none["v"].is_contiguous()
    step_none, _ = layer.step(x[:, 0])
    step_init, _ = layer.step(x[:, 0], layer.init_state(3))
    torch.testing.assert_close(step_none, step_init, rtol=0, atol=0)


def test_an_empty_forward_returns_writable_zeros():
    layer = _layer()
    _, state = layer(torch.randn(2, 0, 16, dtype=torch.float64))
    assert state["k"].shape == (2, 32, 2, 8) and state["k"].is_contiguous()
    state["k"][0, 0, 0, 0] = 1.0  # a view of one shared zero could not take this
    assert state["k"].sum().item() == 1.0 and state["v"].abs().sum().item() == 0.0
