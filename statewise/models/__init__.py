"""Blocks, heads and their config."""

from statewise.models.block import Backbone, Block
from statewise.models.config import ModelConfig
from statewise.models.heads import ClassifierHead, ForecastHead, LanguageModel, build_model

__all__ = [
    "Backbone",
    "Block",
    "ForecastHead",
    "LanguageModel",
    "ModelConfig",
    "ClassifierHead",
    "build_model",
]
