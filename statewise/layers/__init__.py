"""Sequence mixers, all on the contract of :class:`statewise.layers.base.SequenceMixer`."""

from statewise.layers import classic, mingru, retnet  # noqa: F401  (registers the layers)
from statewise.layers.base import SequenceMixer
from statewise.layers.classic import GRU, LSTM, RNN
from statewise.layers.registry import LayerInfo, get, info, names, register

__all__ = ["GRU", "LSTM", "RNN", "LayerInfo", "SequenceMixer", "get", "info", "names", "register"]
