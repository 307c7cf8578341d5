"""Sequence mixers, all on the contract of :class:`statewise.layers.base.SequenceMixer`.

Every module in this package is imported here, so a new file that registers a layer with
``@register`` is picked up without touching this one.
"""

import importlib
import pkgutil

from statewise.layers.base import SequenceMixer
from statewise.layers.registry import LayerInfo, get, info, names, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from statewise.layers.bidirectional import Bidirectional  # noqa: E402
from statewise.layers.classic import GRU, LSTM, RNN  # noqa: E402

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "Bidirectional",
    "LayerInfo",
    "SequenceMixer",
    "get",
    "info",
    "names",
    "register",
]
