"""Inference: generation, the batching engine and its prefix state cache."""

from statewise.infer.engine import Engine, Sampling, Stream
from statewise.infer.generate import generate_text

__all__ = ["Engine", "Sampling", "Stream", "generate_text"]
