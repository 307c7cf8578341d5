"""The models of the heads that map a sequence to a sequence, built from one ModelConfig
(``statewise train``'s [model] table): model.head names the model, model.head_kwargs holds
its own arguments, and the other fields describe the stack (layer, d_model, n_layers, ...).

    head         model                                     head_kwargs (default)
    "seq2seq"    models.seq2seq.Seq2SeqModel over token    decoder (model.layer),
                 ids of model.vocab_size, both sides       decoder_layers (model.n_layers),
                                                           attention ("bahdanau"; "luong",
                                                           "none"), bidirectional (false)
    "ctc"        models.recognizer.CTCRecognizer           bidirectional (false)
    "transducer" models.recognizer.TransducerRecognizer    bidirectional (false),
                                                           prediction (model.layer),
                                                           prediction_layers (1),
                                                           joiner_width (0: d_model),
                                                           max_symbols_per_frame (4)
    "tagger"     models.tagger.TaggerModel                 bidirectional (true), crf (true)

The recognisers read frames of model.input_dim features (model.vocab_size = 0) and emit
model.n_classes symbols, the blank (0) included; the tagger reads token ids
(model.vocab_size > 0) or features and has model.n_classes tags. The defaults are the
estimators' (``statewise.Seq2Seq``, ``Recognizer``, ``SequenceTagger``), except that the
seq2seq decoder has as many layers as the encoder.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from statewise.errors import ConfigError
from statewise.models.config import ModelConfig
from statewise.models.recognizer import CTCRecognizer, TransducerRecognizer
from statewise.models.seq2seq import Seq2SeqModel
from statewise.models.tagger import TaggerModel

ATTENTION_NAMES = ("bahdanau", "luong", "none")


def _stack(config: ModelConfig, layer: str = "", n_layers: int = 0, **fields: Any) -> ModelConfig:
    """``config`` as one plain stack (no head arguments): the layer and depth replaced when
    given, ``fields`` set."""
    return dataclasses.replace(
        config,
        head_kwargs={},
        layer=layer or config.layer,
        layers=[] if layer else config.layers,
        n_layers=n_layers or config.n_layers,
        **fields,
    )


def seq2seq(
    config: ModelConfig,
    *,
    decoder: str = "",
    decoder_layers: int = 0,
    attention: str = "bahdanau",
    bidirectional: bool = False,
) -> Seq2SeqModel:
    """An encoder-decoder over token ids of config.vocab_size (both sides)."""
    encoder = _stack(config, head="lm")
    return Seq2SeqModel(
        encoder,
        _stack(config, decoder, decoder_layers, head="lm"),
        None if attention == "none" else attention,
        bidirectional,
    )


def ctc(config: ModelConfig, *, bidirectional: bool = False) -> CTCRecognizer:
    """An encoder and a CTC head of config.n_classes symbols over input_dim features."""
    return CTCRecognizer(_stack(config, head="classifier"), bidirectional)


def transducer(
    config: ModelConfig,
    *,
    bidirectional: bool = False,
    prediction: str = "",
    prediction_layers: int = 1,
    joiner_width: int = 0,
    max_symbols_per_frame: int = 4,
) -> TransducerRecognizer:
    """An encoder, a prediction network and a joiner over config.n_classes symbols."""
    encoder = _stack(config, head="classifier")
    network = _stack(
        config, prediction, prediction_layers, head="classifier", vocab_size=config.n_classes
    )
    return TransducerRecognizer(
        encoder, network, bidirectional, joiner_width or None, max_symbols_per_frame
    )


def tagger(config: ModelConfig, *, bidirectional: bool = True, crf: bool = True) -> TaggerModel:
    """An encoder, per-token emissions of config.n_classes tags, and a CRF (or softmax)."""
    return TaggerModel(_stack(config, head="classifier"), bidirectional, crf)


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "seq2seq": seq2seq,
    "ctc": ctc,
    "transducer": transducer,
    "tagger": tagger,
}


def build_sequence_head(config: ModelConfig) -> nn.Module:
    """The model of ``config.head`` (one of BUILDERS) with its head_kwargs."""
    return BUILDERS[config.head](config, **config.head_kwargs)


def head_arguments(head: str) -> dict[str, Any]:
    """The head_kwargs of ``head`` and their defaults."""
    parameters = inspect.signature(BUILDERS[head]).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}


def check_head_config(config: ModelConfig) -> None:
    """ConfigError naming the field when ``config`` cannot describe its head's model."""
    from statewise.layers import names

    head, given = config.head, config.head_kwargs
    if not isinstance(given, dict):
        raise ConfigError("model.head_kwargs must be a table of arguments")
    accepted = head_arguments(head)
    for key, value in given.items():
        if key not in accepted:
            raise ConfigError(
                f"model.head_kwargs.{key}: head {head!r} has no argument {key!r}; its "
                f"arguments are {', '.join(accepted)}"
            )
        default = accepted[key]
        if type(value) is not type(default) or (isinstance(default, int) and value < 0):
            kind = "a non-negative int" if type(default) is int else type(default).__name__
            raise ConfigError(f"model.head_kwargs.{key} must be {kind}, got {value!r}")
    for key in ("decoder", "prediction"):
        if given.get(key) and given[key] not in names():
            raise ConfigError(
                f"model.head_kwargs.{key}: {given[key]!r} is not a registered layer "
                "(statewise models lists them)"
            )
    if given.get("attention", "bahdanau") not in ATTENTION_NAMES:
        raise ConfigError(
            f"model.head_kwargs.attention must be one of {ATTENTION_NAMES}, "
            f"got {given['attention']!r}"
        )
    if given.get("max_symbols_per_frame", 1) < 1:
        raise ConfigError("model.head_kwargs.max_symbols_per_frame must be >= 1")
    if head == "seq2seq" and config.vocab_size < 4:
        raise ConfigError("model.vocab_size must cover the task's tokens for a seq2seq head")
    if head != "seq2seq" and config.n_classes < 2:
        raise ConfigError(f"model.n_classes must be >= 2 for a {head} head")
    if head in ("ctc", "transducer") and (config.vocab_size != 0 or config.input_dim < 1):
        raise ConfigError(
            f"a {head} head reads frames of features: model.vocab_size = 0 and "
            "model.input_dim = the features per frame"
        )
