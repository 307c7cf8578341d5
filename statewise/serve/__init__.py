"""The HTTP server over the batching engine (the optional extra ``statewise[serve]``:
FastAPI and uvicorn). ``statewise serve --checkpoint DIR`` runs it; from Python:

    engine = engine_from_checkpoint("runs/char_lm", max_batch=32)
    app = create_app(engine, ServeConfig(model_name="char_lm"))
    make_server(app, "127.0.0.1", 8000).run()
"""

from __future__ import annotations

from pathlib import Path

import torch

from statewise.errors import ArgumentError
from statewise.infer.engine import Engine
from statewise.serve.app import ServeConfig, ServerState, create_app
from statewise.serve.chat import CHAT_STOP, render_chat
from statewise.serve.server import Server, bound_port, make_server


def engine_from_checkpoint(
    path: str | Path,
    max_batch: int = 32,
    state_cache_mb: float = 64.0,
    prefill_chunk: int = 256,
    dtype: torch.dtype | str | None = None,
    session_dir: str | Path | None = None,
    decode: str = "auto",
) -> Engine:
    """An engine over the newest checkpoint in ``path`` with the run's own tokenizer;
    ArgumentError if the run was not trained on text (a char_lm or lm task). ``dtype``:
    "float32", "bfloat16" or "int8" (or those torch dtypes) store the weights so for
    serving (statewise.infer.quantize.quantize_for_serving); torch.float64 casts the whole
    model (tests); None leaves the checkpoint as it is. ``decode``: the engine's decode
    path ("auto", "fused" or "torch", see statewise.infer.decode_path)."""
    from statewise.tasks.text import TEXT_TASKS
    from statewise.tasks.tokenizer import checkpoint_tokenizer
    from statewise.train import checkpoint

    saved = checkpoint.read(path)
    config = saved.config()
    if config.data.task not in TEXT_TASKS:
        raise ArgumentError(
            f"{path} was trained on data.task {config.data.task!r}, not on text; serve needs "
            "a char_lm or lm checkpoint"
        )
    tokenizer = checkpoint_tokenizer(saved.path, config.data.tokenizer)
    model = saved.model()
    if dtype == torch.float64:
        model = model.to(dtype)
    elif dtype is not None:
        from statewise.infer.quantize import quantize_for_serving

        model = quantize_for_serving(model, dtype)
    return Engine(
        model,
        tokenizer,
        max_batch=max_batch,
        prefill_chunk=prefill_chunk,
        state_cache_mb=state_cache_mb,
        session_dir=session_dir,
        decode=decode,
    )


__all__ = [
    "CHAT_STOP",
    "ServeConfig",
    "Server",
    "ServerState",
    "bound_port",
    "create_app",
    "engine_from_checkpoint",
    "make_server",
    "render_chat",
]
