"""transformers' RecurrentGemma (Griffin / Hawk, De et al. 2024) -> a statewise LanguageModel.

The architectures are the same function, block for block:

    RecurrentGemmaModel                   statewise LanguageModel (ModelConfig below)
    embed_tokens * bf16(sqrt(hidden))     embed, embed_scale = sqrt(hidden) rounded to bfloat16
    temporal_pre_norm (x (1 + w))         block.norm_1 (norm = "rmsnorm_plus_one")
    temporal_block: RecurrentBlock        block.mixer: "rglru" (same parameter names)
                    Attention             block.mixer: "attention" (window, MQA/GQA, partial
                                          rotary, q/k/v bias = attention_bias, o_proj bias)
    channel_pre_norm, mlp_block           block.norm_2, block.mlp ("geglu": gate_proj -> gate,
                                          up_proj -> up, down_proj -> down; hidden = I // 2)
    final_norm, lm_head, soft cap         backbone.norm, unembed, logit_softcap

Every option of RecurrentGemmaConfig that changes the function is read (sizes, heads, key/value
heads, lru_width, block_types, window, conv width, rotary fraction and base, biases, norm eps,
soft cap, tied or separate lm_head); options that cannot be represented raise
:class:`~statewise.convert.ConversionError`. Training-only options (dropout, init scales,
use_cache, token ids) are ignored.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from statewise.convert import ConversionError, register_hf
from statewise.models import ModelConfig, build_model

# RecurrentGemmaConfig's defaults, for keys a config.json leaves out
DEFAULTS: dict[str, Any] = {
    "num_hidden_layers": 26,
    "vocab_size": 256000,
    "hidden_size": 2560,
    "intermediate_size": 3 * 2560,
    "num_attention_heads": 10,
    "lru_width": None,
    "attention_window_size": 2048,
    "conv1d_width": 4,
    "logits_soft_cap": 30.0,
    "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh",
    "block_types": ["recurrent", "recurrent", "attention"],
    "num_key_value_heads": None,
    "attention_bias": False,
    "tie_word_embeddings": True,
    "rope_theta": 10000.0,
    "partial_rotary_factor": 0.5,
}
# transformers activations that are all gelu's tanh approximation (equal up to rounding)
GELU_TANH = ("gelu_pytorch_tanh", "gelu_python_tanh", "gelu_new", "gelu_fast")
BLOCKS = {"recurrent": "rglru", "attention": "attention"}

# (pattern of a RecurrentGemma key without the "model." prefix, statewise key)
_RENAMES = [
    (r"embed_tokens\.weight", "embed.weight"),
    (r"final_norm\.weight", "backbone.norm.weight"),
    (r"layers\.(\d+)\.temporal_pre_norm\.weight", r"backbone.blocks.\1.norm_1.weight"),
    (r"layers\.(\d+)\.channel_pre_norm\.weight", r"backbone.blocks.\1.norm_2.weight"),
    (r"layers\.(\d+)\.temporal_block\.(.+)", r"backbone.blocks.\1.mixer.\2"),
    (r"layers\.(\d+)\.mlp_block\.gate_proj\.(weight|bias)", r"backbone.blocks.\1.mlp.gate.\2"),
    (r"layers\.(\d+)\.mlp_block\.up_proj\.(weight|bias)", r"backbone.blocks.\1.mlp.up.\2"),
    (r"layers\.(\d+)\.mlp_block\.down_proj\.(weight|bias)", r"backbone.blocks.\1.mlp.down.\2"),
]


def _get(config: dict[str, Any], key: str) -> Any:
    value = config.get(key)
    return DEFAULTS[key] if value is None else value


def _positive_int(config: dict[str, Any], key: str) -> int:
    value = _get(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConversionError(f"recurrent_gemma: {key} must be a positive integer, got {value!r}")
    return value


def _rope(config: dict[str, Any]) -> tuple[float, float]:
    """(rope_theta, partial_rotary_factor) from rope_parameters (transformers >= 5) or the
    top-level keys of older configs; only the default RoPE is supported."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if scaling or rope_type != "default":
        raise ConversionError(
            f"recurrent_gemma: only the default RoPE is supported, got rope_type={rope_type!r}"
            + (f" and rope_scaling={scaling!r}" if scaling else "")
        )
    theta = params.get("rope_theta", _get(config, "rope_theta"))
    fraction = params.get("partial_rotary_factor", _get(config, "partial_rotary_factor"))
    if not isinstance(theta, (int, float)) or theta <= 0:
        raise ConversionError(f"recurrent_gemma: rope_theta must be positive, got {theta!r}")
    if not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ConversionError(
            f"recurrent_gemma: partial_rotary_factor must be in [0, 1], got {fraction!r}"
        )
    return float(theta), float(fraction)


def model_config(config: dict[str, Any]) -> ModelConfig:
    """The statewise ModelConfig of a RecurrentGemma config.json (a dict)."""
    hidden = _positive_int(config, "hidden_size")
    n_layers = _positive_int(config, "num_hidden_layers")
    heads = _positive_int(config, "num_attention_heads")
    kv_heads = _get(config, "num_key_value_heads") or heads
    lru_width = _get(config, "lru_width") or hidden
    for key, value in (("num_key_value_heads", kv_heads), ("lru_width", lru_width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConversionError(f"recurrent_gemma: {key} must be a positive integer")
    if heads % kv_heads:
        raise ConversionError(
            f"recurrent_gemma: num_key_value_heads={kv_heads} must divide "
            f"num_attention_heads={heads}"
        )
    if hidden < heads:
        raise ConversionError(
            f"recurrent_gemma: num_attention_heads={heads} exceeds hidden_size={hidden}"
        )
    mlp_hidden = _positive_int(config, "intermediate_size") // 2
    if mlp_hidden == 0:
        raise ConversionError("recurrent_gemma: intermediate_size must be at least 2")
    activation = _get(config, "hidden_activation")
    if activation not in GELU_TANH:
        raise ConversionError(
            f"recurrent_gemma: hidden_activation {activation!r} is not supported "
            f"(supported: the tanh GeLU, {', '.join(GELU_TANH)})"
        )
    cap = _get(config, "logits_soft_cap")
    if not isinstance(cap, (int, float)) or cap <= 0:
        raise ConversionError(f"recurrent_gemma: logits_soft_cap must be > 0, got {cap!r}")
    eps = _get(config, "rms_norm_eps")
    if not isinstance(eps, (int, float)) or eps <= 0:
        raise ConversionError(f"recurrent_gemma: rms_norm_eps must be > 0, got {eps!r}")
    block_types = _get(config, "block_types")
    if not isinstance(block_types, list) or not block_types:
        raise ConversionError("recurrent_gemma: block_types must be a non-empty list")
    unknown = sorted({str(b) for b in block_types} - set(BLOCKS))
    if unknown:
        raise ConversionError(
            f"recurrent_gemma: block_types may hold only 'recurrent' and 'attention', got {unknown}"
        )
    pattern = [BLOCKS[b] for b in block_types[:n_layers]]
    theta, fraction = _rope(config)
    rotated = 2 * len(range(0, int(hidden // heads * fraction), 2))
    if rotated > hidden // heads:
        raise ConversionError(
            f"recurrent_gemma: partial_rotary_factor={fraction} rotates {rotated} features of a "
            f"head of {hidden // heads}"
        )
    layer_kwargs: dict[str, Any] = {}
    if "rglru" in pattern:
        if lru_width % heads:
            raise ConversionError(
                f"recurrent_gemma: num_attention_heads={heads} must divide lru_width={lru_width}"
            )
        layer_kwargs["rglru"] = {
            "lru_width": lru_width,
            "n_heads": heads,
            "conv_width": _positive_int(config, "conv1d_width"),
        }
    if "attention" in pattern:
        layer_kwargs["attention"] = {
            "n_heads": heads,
            "n_kv_heads": kv_heads,
            "head_dim": hidden // heads,
            "window": _positive_int(config, "attention_window_size"),
            "rotary_fraction": fraction,
            "rope_theta": theta,
            "qkv_bias": bool(_get(config, "attention_bias")),
            "out_bias": True,
        }
    mlp_ratio = mlp_hidden / hidden
    if int(round(mlp_ratio * hidden)) != mlp_hidden:  # float round trip of the MLP width
        raise ConversionError(f"recurrent_gemma: MLP width {mlp_hidden} is not representable")
    normaliser = torch.tensor(math.sqrt(hidden), dtype=torch.bfloat16).item()
    return ModelConfig(
        layer=pattern[0],
        layers=pattern if len(set(pattern)) > 1 else [],
        d_model=hidden,
        n_layers=n_layers,
        vocab_size=_positive_int(config, "vocab_size"),
        layer_kwargs=layer_kwargs,
        mlp_ratio=mlp_ratio,
        mlp="geglu",
        norm="rmsnorm_plus_one",
        norm_eps=float(eps),
        tie_embeddings=bool(_get(config, "tie_word_embeddings")),
        embed_scale=float(normaliser),
        logit_softcap=float(cap),
        head="lm",
    )


def _rename(key: str) -> str | None:
    for pattern, target in _RENAMES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, target, key)
    return None


@register_hf("recurrent_gemma")
def convert(
    config: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """RecurrentGemma(ForCausalLM|Model) config.json and tensors -> (ModelConfig, state_dict)."""
    cfg = model_config(config)
    state: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in tensors.items():
        if key == "lm_head.weight":
            if not cfg.tie_embeddings:
                state["unembed.weight"] = tensor
            continue  # tied: the embedding is the head
        bare = key.removeprefix("model.")
        if bare.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from the config
        target = _rename(bare)
        if target is None:
            unknown.append(key)
        else:
            state[target] = tensor
    if cfg.tie_embeddings and "embed.weight" in state:
        state["unembed.weight"] = state["embed.weight"]
    _check_fit(cfg, state, unknown)
    return cfg, {k: v.to(torch.float32) for k, v in state.items()}


def _check_fit(cfg: ModelConfig, state: dict[str, torch.Tensor], unknown: list[str]) -> None:
    """Every tensor has a place of the right shape in the model, and every place is filled."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    unknown = unknown + [k for k in state if k not in expected]
    if unknown:
        raise ConversionError(
            f"recurrent_gemma: tensors that this config has no place for: {unknown[:4]} "
            "(does num_hidden_layers or block_types match the weights?)"
        )
    missing = [k for k in expected if k not in state]
    if missing:
        raise ConversionError(f"recurrent_gemma: the checkpoint lacks tensors for {missing[:4]}")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ConversionError(
                f"recurrent_gemma: {key} has shape {tuple(state[key].shape)} in the checkpoint "
                f"but the config implies {shape}"
            )
