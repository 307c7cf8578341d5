"""Inference: generation, the batching engine, its prefix state cache, and states saved,
loaded and checked (state_io)."""

from statewise.infer.engine import Engine, Sampling, Stream
from statewise.infer.generate import generate_text
from statewise.infer.state_io import (
    decode_state_b64,
    encode_state_b64,
    load_state_file,
    model_fingerprint,
    save_state_file,
    state_from_bytes,
    state_to_bytes,
)

__all__ = [
    "Engine",
    "Sampling",
    "Stream",
    "decode_state_b64",
    "encode_state_b64",
    "generate_text",
    "load_state_file",
    "model_fingerprint",
    "save_state_file",
    "state_from_bytes",
    "state_to_bytes",
]
