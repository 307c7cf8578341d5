"""ModelConfig: everything needed to rebuild a model from a checkpoint's config.toml."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

HEADS = ("lm", "classifier", "forecaster")
NORMS = ("rmsnorm", "layernorm")


@dataclass
class ModelConfig:
    """A stack of residual blocks around one kind of sequence mixer, and a head.

    layer: a registered layer name (``statewise models`` lists them).
    layer_kwargs: extra constructor arguments of that layer (e.g. ``n_heads`` for retnet).
    mlp_ratio: hidden width of each block's MLP over d_model; 0 means no MLP.
    head: "lm" (LanguageModel), "classifier" (SequenceClassifier) or "forecaster".
    vocab_size: token vocabulary for "lm" (and for a "classifier" over tokens); 0 for
        a classifier or forecaster over real-valued inputs of width ``input_dim``.
    """

    layer: str = "mingru"
    d_model: int = 128
    n_layers: int = 2
    vocab_size: int = 256
    layer_kwargs: dict[str, Any] = field(default_factory=dict)
    mlp_ratio: float = 4.0
    norm: str = "rmsnorm"
    dropout: float = 0.0
    tie_embeddings: bool = True
    head: str = "lm"
    n_classes: int = 0
    input_dim: int = 1
    horizon: int = 1

    def __post_init__(self) -> None:
        from statewise.layers import info

        layer_class = info(self.layer).cls  # ValueError naming the choices if unknown
        accepted = inspect.signature(layer_class.__init__).parameters
        for key in self.layer_kwargs:
            if key not in accepted or key in ("self", "d_model"):
                options = ", ".join(p for p in accepted if p not in ("self", "d_model"))
                raise ValueError(
                    f"model.layer_kwargs.{key}: layer {self.layer!r} has no argument {key!r}; "
                    f"its arguments are {options}"
                )
        for name in ("d_model", "n_layers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.head not in HEADS:
            raise ValueError(f"model.head must be one of {HEADS}, got {self.head!r}")
        if self.norm not in NORMS:
            raise ValueError(f"model.norm must be one of {NORMS}, got {self.norm!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.mlp_ratio < 0:
            raise ValueError(f"model.mlp_ratio must be >= 0, got {self.mlp_ratio}")
        if self.head == "lm" and self.vocab_size <= 0:
            raise ValueError("model.vocab_size must be positive for a language model")
        if self.head == "classifier" and self.n_classes < 2:
            raise ValueError("model.n_classes must be >= 2 for a classifier")
        if self.head == "forecaster" and (self.horizon <= 0 or self.input_dim <= 0):
            raise ValueError("model.horizon and model.input_dim must be positive for a forecaster")
