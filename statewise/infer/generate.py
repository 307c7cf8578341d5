"""Text generation from a language-model checkpoint, streamed as it is produced."""

from __future__ import annotations

from collections.abc import Callable

import torch

from statewise.errors import ArgumentError
from statewise.models import LanguageModel
from statewise.tasks.tokenizer import ByteTokenizer


def generate_text(
    model: LanguageModel,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    on_text: Callable[[str], None] | None = None,
) -> str:
    """The continuation of ``prompt`` (without the prompt); ``on_text`` receives it piece by
    piece as the tokens complete UTF-8 characters."""
    if not isinstance(model, LanguageModel):
        raise ArgumentError('generate needs a language-model checkpoint (model.head = "lm")')
    if not prompt:
        raise ArgumentError("the prompt is empty: give at least one character")
    tokenizer = ByteTokenizer()
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ArgumentError(
            f"this checkpoint's vocabulary has {model.config.vocab_size} tokens, not the "
            f"{tokenizer.vocab_size} bytes of text; it was not trained on text (data.task)"
        )
    decoder = tokenizer.stream_decoder()
    pieces: list[str] = []

    def emit(token: torch.Tensor) -> None:
        piece = decoder.decode(bytes([int(token[0])]))
        if piece:
            pieces.append(piece)
            if on_text is not None:
                on_text(piece)

    ids = torch.tensor([tokenizer.encode(prompt)])
    model.generate(ids, max_new_tokens, temperature, top_k, top_p, seed, on_token=emit)
    tail = decoder.decode(b"", final=True)
    if tail:
        pieces.append(tail)
        if on_text is not None:
            on_text(tail)
    return "".join(pieces)
