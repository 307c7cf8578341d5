"""Inference: generation and streaming."""

from statewise.infer.generate import generate_text

__all__ = ["generate_text"]
