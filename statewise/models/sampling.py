"""Choosing the next token from logits: temperature, top-k and nucleus (top-p) sampling."""

from __future__ import annotations

import torch

from statewise.errors import ArgumentError, finite_number


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """ArgumentError naming the argument when a sampling setting is out of range, not a
    number, or not finite."""
    if finite_number("temperature", temperature) < 0:
        raise ArgumentError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ArgumentError(f"top_k must be an int >= 1, got {top_k!r}")
    if top_p is not None and not 0.0 < finite_number("top_p", top_p) <= 1.0:
        raise ArgumentError(f"top_p must be in (0, 1], got {top_p}")


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Token ids (B,) drawn from logits (B, V).

    temperature 0 takes the argmax; top_k keeps the k largest logits; top_p keeps the
    smallest set of tokens whose probabilities sum to at least top_p. The logits are
    shifted so that their maximum is 0 before dividing by the temperature: a temperature
    as small as 1e-45 then sends every other logit to -inf (a draw among the maxima)
    instead of overflowing to inf - inf = NaN.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked before it already reach top_p
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
