"""Text generation from a language-model checkpoint, streamed as it is produced."""

from __future__ import annotations

from collections.abc import Callable

import torch

from statewise.errors import ArgumentError
from statewise.models import LanguageModel
from statewise.tasks.tokenizer import ByteTokenizer, Tokenizer


def generate_text(
    model: LanguageModel,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    on_text: Callable[[str], None] | None = None,
    tokenizer: Tokenizer | None = None,
) -> str:
    """The continuation of ``prompt`` (without the prompt), encoded and decoded by
    ``tokenizer`` (default: bytes); ``on_text`` receives it piece by piece as the tokens
    complete characters.

    The model may have more outputs than the tokenizer has tokens (model.vocab_size is
    often rounded up); a drawn id beyond the tokenizer's vocabulary, which training never
    showed it, adds no text.
    """
    if not isinstance(model, LanguageModel):
        raise ArgumentError('generate needs a language-model checkpoint (model.head = "lm")')
    if not prompt:
        raise ArgumentError("the prompt is empty: give at least one character")
    tokenizer = tokenizer or ByteTokenizer()
    if model.config.vocab_size < tokenizer.vocab_size:
        raise ArgumentError(
            f"this checkpoint's vocabulary has {model.config.vocab_size} tokens, fewer than "
            f"the {tokenizer.vocab_size} of its tokenizer ({tokenizer.identity()['kind']}); "
            "it was not trained on this text (data.task, data.tokenizer)"
        )
    decoder = tokenizer.stream_decoder()
    pieces: list[str] = []

    def add(piece: str) -> None:
        if piece:
            pieces.append(piece)
            if on_text is not None:
                on_text(piece)

    def emit(token: torch.Tensor) -> None:
        if int(token[0]) < tokenizer.vocab_size:
            add(decoder.step(int(token[0])))

    ids = torch.tensor([tokenizer.encode(prompt)])
    if ids.shape[1] == 0:
        raise ArgumentError("the prompt encodes to no token")
    model.generate(ids, max_new_tokens, temperature, top_k, top_p, seed, on_token=emit)
    add(decoder.flush())
    return "".join(pieces)
