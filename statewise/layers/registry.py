"""The registry of sequence mixers: ``names()``, ``get(name, d_model=...)``, ``info(name)``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from statewise.errors import ArgumentError, ArgumentTypeError
from statewise.layers.base import SequenceMixer


@dataclass(frozen=True)
class LayerInfo:
    """What ``statewise models`` shows for one registered layer."""

    name: str
    cls: type[SequenceMixer]
    family: str  # "nonlinear", "diagonal linear", "matrix state", "attention", ...
    paper: str
    state_size: str  # floats per sequence at default settings, a Python expression in d

    @property
    def modes(self) -> tuple[str, ...]:
        return self.cls.modes


_REGISTRY: dict[str, LayerInfo] = {}


def register(
    name: str, *, family: str, paper: str, state_size: str
) -> Callable[[type[SequenceMixer]], type[SequenceMixer]]:
    """Class decorator: put a :class:`SequenceMixer` into the registry under ``name``."""

    def add(cls: type[SequenceMixer]) -> type[SequenceMixer]:
        if name in _REGISTRY:
            raise ValueError(f"layer {name!r} is registered twice")
        if not issubclass(cls, SequenceMixer) or not cls.modes:
            raise TypeError(f"{cls.__name__} must be a SequenceMixer with modes")
        _REGISTRY[name] = LayerInfo(name, cls, family, paper, state_size)
        return cls

    return add


def names() -> list[str]:
    """The names of all registered layers, sorted."""
    return sorted(_REGISTRY)


def info(name: str) -> LayerInfo:
    """The registry entry of ``name``; ValueError naming the choices if unknown."""
    if name not in _REGISTRY:
        raise ArgumentError(f"unknown layer {name!r}; choose one of: {', '.join(names())}")
    return _REGISTRY[name]


def get(name: str, d_model: int, **kwargs) -> SequenceMixer:
    """Build the layer ``name`` of width ``d_model``; extra keyword arguments go to its class.
    A NaN among them is refused here, since NaN passes every range check a layer makes."""
    cls = info(name).cls
    for key, value in kwargs.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and math.isnan(v) for v in values):
            raise ArgumentError(f"layer {name!r}: {key} must not be NaN, got {value!r}")
    try:
        return cls(d_model=d_model, **kwargs)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise ArgumentTypeError(f"layer {name!r}: {err}") from None
        raise
