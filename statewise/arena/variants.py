"""Arena entries that are a registered layer built with model options: ``LAYER+VARIANT``.

    attention+rmt   the layer's stack as a Recurrent Memory Transformer: 8 memory tokens
                    carried between segments of 32 tokens (statewise/models/rmt.py;
                    Bulatov et al. 2022 use 10 memory tokens on segments of 128 to 512)

An entry without ``+`` is the registered layer as it is. The variant's options go into
the cell's ModelConfig; the layer's family (its learning-rate sweep) is the layer's.
"""

from __future__ import annotations

from typing import Any

from statewise.errors import ArgumentError

VARIANTS: dict[str, dict[str, Any]] = {"rmt": {"memory_tokens": 8, "segment_len": 32}}


def split_entry(entry: str) -> tuple[str, dict[str, Any]]:
    """(registered layer, ModelConfig options) of an arena entry; ArgumentError naming the
    choices for an unknown layer or variant."""
    from statewise.layers import names

    layer, plus, variant = entry.partition("+")
    if layer not in names():
        raise ArgumentError(f"unknown layer {layer!r}; choose from: {', '.join(names())}")
    if plus and variant not in VARIANTS:
        raise ArgumentError(
            f"unknown variant {variant!r} in {entry!r}; variants: {', '.join(VARIANTS)} "
            "(as LAYER+VARIANT)"
        )
    return layer, dict(VARIANTS[variant]) if plus else {}


def layer_of(entry: str) -> str:
    """The registered layer of an arena entry."""
    return split_entry(entry)[0]
