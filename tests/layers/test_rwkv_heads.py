"""rwkv's default heads are RWKV-6's head size, 64, where d_model allows."""

from __future__ import annotations

import pytest

import statewise.layers as L
from statewise.layers.rwkv import default_heads


@pytest.mark.parametrize(
    "d_model, heads", [(16, 1), (40, 1), (64, 1), (96, 1), (128, 2), (200, 2), (256, 4)]
)
def test_default_heads_are_about_64_wide_and_divide_d_model(d_model, heads):
    assert default_heads(d_model) == heads
    layer = L.get("rwkv", d_model=d_model)
    assert layer.n_heads == heads and layer.head_dim * heads == d_model


def test_explicit_heads_still_win():
    assert L.get("rwkv", d_model=64, n_heads=4).head_dim == 16
