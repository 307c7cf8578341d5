"""Where the float64 reference recurrences register themselves for the contract harness."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Reference:
    """A reference recurrence for one registered layer.

    run(layer, x, state) -> (y, final_state): x is float64 (B, T, D), state is in the layer's
    own state format; a plain loop over time, written from the paper's equations, that reads
    the layer's parameters but calls none of statewise's ops.
    kwargs: constructor arguments the harness uses (small sizes, several heads, small chunks).
    random_state(layer, batch, generator) -> a random valid initial state, when a normal
    random draw of every floating leaf is not a valid state.
    """

    layer: str
    run: Callable[..., tuple[Any, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)
    random_state: Callable[..., Any] | None = None


# keyed by case: the layer name, or "name:variant" for a layer built with other options
REFERENCES: dict[str, Reference] = {}


def reference(
    name: str,
    variant: str | None = None,
    random_state: Callable[..., Any] | None = None,
    **kwargs: Any,
):
    """Decorator: register ``fn`` as the reference recurrence of layer ``name``.

    ``variant`` names a further harness case of the same layer built with ``kwargs``
    (e.g. ``variant="negative", negative_eigenvalues=True``); stack the decorator to
    register several cases with one reference function.
    """
    case = name if variant is None else f"{name}:{variant}"

    def add(fn: Callable[..., tuple[Any, Any]]) -> Callable[..., tuple[Any, Any]]:
        if case in REFERENCES:
            raise ValueError(f"two references for {case!r}")
        REFERENCES[case] = Reference(name, fn, kwargs, random_state)
        return fn

    return add
