"""transformers Mamba (``model_type = "mamba"``) and Mamba-2 (``"mamba2"``) checkpoints.

Both are ``embeddings -> layers[i]: x + mixer(RMSNorm(x)) -> norm_f -> lm_head``, which is
statewise's LanguageModel with ``mlp_ratio = 0`` and ``norm = "rmsnorm"``:

    backbone.embeddings.weight          -> embed.weight (and unembed.weight when tied)
    backbone.layers.{i}.norm.weight     -> backbone.blocks.{i}.norm_1.weight
    backbone.layers.{i}.mixer.<name>    -> backbone.blocks.{i}.mixer.<name>  (same names)
    backbone.norm_f.weight              -> backbone.norm.weight
    lm_head.weight                      -> unembed.weight (untied checkpoints)

The mixers' parameters have the same names and shapes in statewise's ``mamba`` and
``mamba2`` layers, so they are copied as they are. Keys without the ``backbone.`` prefix (a
saved ``MambaModel``) and the old ``embedding.`` name are accepted. Every tensor's shape
is checked against the config, and a missing or unexpected tensor is an error.
Options that change only the initialisation (time_step_min/max/floor/scale/init_scheme,
initializer_range, rescale_prenorm_residual) or only the computation path (use_mambapy,
use_associative_scan, chunk_size, residual_in_fp32: statewise computes in the model's
dtype) are ignored.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from statewise.convert import ConversionError, register_hf
from statewise.layers.mamba import CONV_ACTIVATIONS
from statewise.models import ModelConfig

# transformers' defaults for keys a config.json may leave out
MAMBA_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50280,
    "hidden_size": 768,
    "state_size": 16,
    "num_hidden_layers": 32,
    "layer_norm_epsilon": 1e-5,
    "expand": 2,
    "conv_kernel": 4,
    "use_bias": False,
    "use_conv_bias": True,
    "hidden_act": "silu",
    "time_step_rank": "auto",
    "tie_word_embeddings": True,
}
MAMBA2_DEFAULTS: dict[str, Any] = {
    "num_heads": 128,
    "head_dim": 64,
    "vocab_size": 32768,
    "hidden_size": 4096,
    "state_size": 128,
    "num_hidden_layers": 64,
    "layer_norm_epsilon": 1e-5,
    "expand": 2,
    "conv_kernel": 4,
    "n_groups": 8,
    "use_bias": False,
    "use_conv_bias": True,
    "hidden_act": "silu",
    "time_step_limit": (0.0, math.inf),
    "tie_word_embeddings": False,
}


class _Tensors:
    """The checkpoint's tensors by normalised name; ``take`` checks shapes, ``finish``
    complains about anything left over."""

    def __init__(self, model_type: str, tensors: dict[str, torch.Tensor]) -> None:
        self.model_type = model_type
        self.left: dict[str, torch.Tensor] = {}
        for key, value in tensors.items():
            name = key.removeprefix("backbone.")
            if name.startswith("embedding."):
                name = "embeddings." + name.removeprefix("embedding.")
            self.left[name] = value

    def take(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in self.left:
            raise ConversionError(
                f"{self.model_type} checkpoint: tensor {name!r} is missing "
                f"(expected shape {shape} from config.json)"
            )
        tensor = self.left.pop(name)
        if tuple(tensor.shape) != shape:
            raise ConversionError(
                f"{self.model_type} checkpoint: tensor {name!r} has shape "
                f"{tuple(tensor.shape)}, but config.json implies {shape}"
            )
        return tensor.to(torch.float32) if tensor.is_floating_point() else tensor

    def has(self, name: str) -> bool:
        return name in self.left

    def finish(self) -> None:
        if self.left:
            names = sorted(self.left)
            raise ConversionError(
                f"{self.model_type} checkpoint: unexpected tensors {names[:5]}"
                f"{' ...' if len(names) > 5 else ''} (not part of the architecture in "
                "config.json)"
            )


def _options(config: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    return {key: config.get(key, default) for key, default in defaults.items()}


def _positive(model_type: str, opts: dict[str, Any], *keys: str) -> None:
    for key in keys:
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConversionError(
                f"{model_type} config.json: {key} must be a positive int, got {value!r}"
            )


def _check_activation(model_type: str, name: str) -> None:
    if name not in CONV_ACTIVATIONS:
        raise ConversionError(
            f"{model_type} config.json: hidden_act {name!r} is not supported; "
            f"supported: {', '.join(CONV_ACTIVATIONS)}"
        )


def _inner_width(model_type: str, opts: dict[str, Any]) -> int:
    expand = opts["expand"]
    if isinstance(expand, bool) or not isinstance(expand, (int, float)) or expand <= 0:
        raise ConversionError(f"{model_type} config.json: expand must be positive, got {expand!r}")
    return int(expand * opts["hidden_size"])  # transformers' intermediate_size


def _float(value: Any) -> float:
    """A JSON number, or transformers' {"__float__": "Infinity"} encoding of inf/nan."""
    if isinstance(value, dict) and "__float__" in value:
        value = value["__float__"]
    return float(value)


def _frame(
    tensors: _Tensors, opts: dict[str, Any], n_layers: int, d_model: int
) -> dict[str, torch.Tensor]:
    """Embeddings, block norms, final norm and head; the mixers are added by the caller."""
    vocab = opts["vocab_size"]
    embed = tensors.take("embeddings.weight", (vocab, d_model))
    state = {
        "embed.weight": embed,
        "backbone.norm.weight": tensors.take("norm_f.weight", (d_model,)),
    }
    for i in range(n_layers):
        state[f"backbone.blocks.{i}.norm_1.weight"] = tensors.take(
            f"layers.{i}.norm.weight", (d_model,)
        )
    if opts["tie_word_embeddings"]:
        if tensors.has("lm_head.weight"):  # transformers ties it to the embeddings anyway
            tensors.take("lm_head.weight", (vocab, d_model))
        state["unembed.weight"] = embed
    elif tensors.has("lm_head.weight"):
        state["unembed.weight"] = tensors.take("lm_head.weight", (vocab, d_model))
    else:
        raise ConversionError(
            f"{tensors.model_type} checkpoint: tie_word_embeddings is false but there is no "
            "lm_head.weight (a base model saved without its language-model head?)"
        )
    return state


def _model_config(layer: str, opts: dict[str, Any], layer_kwargs: dict[str, Any]) -> ModelConfig:
    return ModelConfig(
        layer=layer,
        d_model=opts["hidden_size"],
        n_layers=opts["num_hidden_layers"],
        vocab_size=opts["vocab_size"],
        layer_kwargs=layer_kwargs,
        mlp_ratio=0.0,
        norm="rmsnorm",
        norm_eps=float(opts["layer_norm_epsilon"]),
        tie_embeddings=bool(opts["tie_word_embeddings"]),
    )


@register_hf("mamba")
def convert_mamba(
    config: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """MambaForCausalLM / MambaModel -> a LanguageModel of ``mamba`` blocks."""
    opts = _options(config, MAMBA_DEFAULTS)
    _positive(
        "mamba", opts, "vocab_size", "hidden_size", "state_size", "num_hidden_layers", "conv_kernel"
    )
    _check_activation("mamba", opts["hidden_act"])
    d, n, k = opts["hidden_size"], opts["state_size"], opts["conv_kernel"]
    inner = _inner_width("mamba", opts)
    if config.get("intermediate_size", inner) != inner:
        raise ConversionError(
            f"mamba config.json: intermediate_size {config['intermediate_size']} is not "
            f"int(expand * hidden_size) = {inner}"
        )
    rank = opts["time_step_rank"]
    rank = math.ceil(d / 16) if rank == "auto" else rank
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ConversionError(
            f"mamba config.json: time_step_rank must be 'auto' or a positive int, got {rank!r}"
        )
    bias, conv_bias = bool(opts["use_bias"]), bool(opts["use_conv_bias"])

    source = _Tensors("mamba", tensors)
    state = _frame(source, opts, opts["num_hidden_layers"], d)
    shapes = {
        "in_proj.weight": (2 * inner, d),
        "conv1d.weight": (inner, 1, k),
        "x_proj.weight": (rank + 2 * n, inner),
        "dt_proj.weight": (inner, rank),
        "dt_proj.bias": (inner,),
        "A_log": (inner, n),
        "D": (inner,),
        "out_proj.weight": (d, inner),
    }
    if bias:
        shapes.update({"in_proj.bias": (2 * inner,), "out_proj.bias": (d,)})
    if conv_bias:
        shapes["conv1d.bias"] = (inner,)
    for i in range(opts["num_hidden_layers"]):
        for name, shape in shapes.items():
            state[f"backbone.blocks.{i}.mixer.{name}"] = source.take(
                f"layers.{i}.mixer.{name}", shape
            )
    source.finish()
    kwargs = {
        "d_state": n,
        "d_conv": k,
        "d_inner": inner,
        "dt_rank": rank,
        "bias": bias,
        "conv_bias": conv_bias,
        "activation": opts["hidden_act"],
    }
    return _model_config("mamba", opts, kwargs), state


@register_hf("mamba2")
def convert_mamba2(
    config: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Mamba2ForCausalLM / Mamba2Model -> a LanguageModel of ``mamba2`` blocks."""
    opts = _options(config, MAMBA2_DEFAULTS)
    _positive(
        "mamba2",
        opts,
        "vocab_size",
        "hidden_size",
        "state_size",
        "num_hidden_layers",
        "conv_kernel",
        "num_heads",
        "head_dim",
        "n_groups",
    )
    _check_activation("mamba2", opts["hidden_act"])
    d, n, k = opts["hidden_size"], opts["state_size"], opts["conv_kernel"]
    heads, head_dim, groups = opts["num_heads"], opts["head_dim"], opts["n_groups"]
    inner = _inner_width("mamba2", opts)
    if heads * head_dim != inner:
        raise ConversionError(
            f"mamba2 config.json: num_heads * head_dim = {heads * head_dim} must equal "
            f"expand * hidden_size = {inner}"
        )
    if heads % groups or inner % groups:
        raise ConversionError(
            f"mamba2 config.json: n_groups = {groups} must divide num_heads = {heads} "
            f"(and the inner width {inner})"
        )
    try:
        lo, hi = (_float(v) for v in opts["time_step_limit"])
    except (TypeError, ValueError):
        raise ConversionError(
            f"mamba2 config.json: time_step_limit must be a pair of numbers, "
            f"got {opts['time_step_limit']!r}"
        ) from None
    if not lo <= hi:
        raise ConversionError(
            f"mamba2 config.json: time_step_limit needs low <= high, got {(lo, hi)}"
        )
    bias, conv_bias = bool(opts["use_bias"]), bool(opts["use_conv_bias"])
    conv_dim = inner + 2 * groups * n

    source = _Tensors("mamba2", tensors)
    state = _frame(source, opts, opts["num_hidden_layers"], d)
    shapes = {
        "in_proj.weight": (inner + conv_dim + heads, d),
        "conv1d.weight": (conv_dim, 1, k),
        "dt_bias": (heads,),
        "A_log": (heads,),
        "D": (heads,),
        "norm.weight": (inner,),
        "out_proj.weight": (d, inner),
    }
    if bias:
        shapes.update({"in_proj.bias": (inner + conv_dim + heads,), "out_proj.bias": (d,)})
    if conv_bias:
        shapes["conv1d.bias"] = (conv_dim,)
    for i in range(opts["num_hidden_layers"]):
        for name, shape in shapes.items():
            state[f"backbone.blocks.{i}.mixer.{name}"] = source.take(
                f"layers.{i}.mixer.{name}", shape
            )
    source.finish()
    kwargs: dict[str, Any] = {
        "d_state": n,
        "d_conv": k,
        "d_inner": inner,
        "n_heads": heads,
        "head_dim": head_dim,
        "n_groups": groups,
        "bias": bias,
        "conv_bias": conv_bias,
        "activation": opts["hidden_act"],
        "norm_eps": float(opts["layer_norm_epsilon"]),
    }
    if (lo, hi) != (0.0, math.inf):
        kwargs["dt_limit"] = [lo, hi]
    return _model_config("mamba2", opts, kwargs), state
