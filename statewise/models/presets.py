"""Model presets: ModelConfigs of published architectures, built from a few sizes.

    from statewise.models.presets import griffin, hawk
    model = statewise.LanguageModel(griffin(d_model=256, n_layers=6, vocab_size=256))

griffin / hawk (De et al. 2024): residual blocks of Gemma's kind (RMSNorm with (1 + w), a
GeGLU MLP of expansion 3, embeddings scaled by sqrt(d_model), logits soft-capped at 30)
around Hawk's recurrent block ("rglru") and, for Griffin, local multi-query attention
("attention", window 2048, rotary on half of each head) in the pattern
rglru, rglru, attention. At d_model=2560, n_layers=26, vocab_size=256000 this is the
architecture of RecurrentGemma-2B (the converter's embedding scale is additionally rounded to
bfloat16, as transformers does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from statewise.errors import ConfigError
from statewise.models.config import ModelConfig

GRIFFIN_PATTERN = ("rglru", "rglru", "attention")
HEAD_WIDTH = 256  # RecurrentGemma's head width: n_heads defaults to d_model // 256


def _default_heads(d_model: int, n_heads: int | None) -> int:
    if n_heads is not None:
        return n_heads
    heads = max(1, d_model // HEAD_WIDTH)
    if d_model % heads:
        raise ConfigError(
            f"d_model={d_model} is not a multiple of the default n_heads={heads}; pass n_heads"
        )
    return heads


def griffin(
    d_model: int,
    n_layers: int,
    vocab_size: int = 256,
    *,
    n_heads: int | None = None,
    n_kv_heads: int = 1,
    lru_width: int | None = None,
    conv_width: int = 4,
    window: int = 2048,
    rotary_fraction: float = 0.5,
    rope_theta: float = 10000.0,
    mlp_ratio: float = 3.0,
    logit_softcap: float = 30.0,
    norm_eps: float = 1e-6,
    pattern: Sequence[str] = GRIFFIN_PATTERN,
    **model_kwargs: Any,
) -> ModelConfig:
    """Griffin: recurrent blocks and local attention blocks in ``pattern``.

    n_heads: RG-LRU gate blocks and attention query heads (default d_model // 256, at least
    1); n_kv_heads: key/value heads (1 = multi-query, as the paper); lru_width: the RG-LRU's
    width (default d_model); window: the local attention's window. Further keyword arguments
    (dropout, tie_embeddings, head, ...) go to ModelConfig.
    """
    heads = _default_heads(d_model, n_heads)
    pattern = list(pattern)
    unknown = sorted(set(pattern) - {"rglru", "attention"})
    if not pattern or unknown:
        raise ConfigError(f"pattern must list 'rglru' and 'attention' blocks, got {pattern}")
    layer_kwargs: dict[str, Any] = {}
    if "rglru" in pattern:
        layer_kwargs["rglru"] = {
            "lru_width": d_model if lru_width is None else lru_width,
            "n_heads": heads,
            "conv_width": conv_width,
        }
    if "attention" in pattern:
        layer_kwargs["attention"] = {
            "n_heads": heads,
            "n_kv_heads": n_kv_heads,
            "head_dim": d_model // heads,
            "window": window,
            "rotary_fraction": float(rotary_fraction),
            "rope_theta": float(rope_theta),
            "qkv_bias": False,
            "out_bias": True,
        }
    settings: dict[str, Any] = dict(
        layer=pattern[0],
        layers=pattern if len(set(pattern)) > 1 else [],
        d_model=d_model,
        n_layers=n_layers,
        vocab_size=vocab_size,
        layer_kwargs=layer_kwargs,
        mlp_ratio=float(mlp_ratio),
        mlp="geglu",
        norm="rmsnorm_plus_one",
        norm_eps=float(norm_eps),
        embed_scale=math.sqrt(d_model),
        logit_softcap=float(logit_softcap),
    )
    return ModelConfig(**{**settings, **model_kwargs})


def hawk(
    d_model: int,
    n_layers: int,
    vocab_size: int = 256,
    *,
    n_heads: int | None = None,
    lru_width: int | None = None,
    conv_width: int = 4,
    mlp_ratio: float = 3.0,
    logit_softcap: float = 30.0,
    norm_eps: float = 1e-6,
    **model_kwargs: Any,
) -> ModelConfig:
    """Hawk: Griffin without attention, every block Hawk's recurrent block (the RG-LRU)."""
    return griffin(
        d_model,
        n_layers,
        vocab_size,
        n_heads=n_heads,
        lru_width=lru_width,
        conv_width=conv_width,
        mlp_ratio=mlp_ratio,
        logit_softcap=logit_softcap,
        norm_eps=norm_eps,
        pattern=("rglru",),
        **model_kwargs,
    )
