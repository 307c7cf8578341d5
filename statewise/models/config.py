"""ModelConfig: everything needed to rebuild a model from a checkpoint's config.toml."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from statewise.errors import ConfigError, check_caps, check_finite_fields

HEADS = ("lm", "classifier", "forecaster", "rnn", "seq2seq", "ctc", "transducer", "tagger")
SEQUENCE_HEADS = ("seq2seq", "ctc", "transducer", "tagger")  # models.sequence_heads
NORMS = ("rmsnorm", "rmsnorm_plus_one", "layernorm")
MLPS = ("gelu", "geglu", "swiglu")


# sizes above these are typos on any machine statewise runs on (check_caps)
CAPS = {
    "d_model": 1 << 16,
    "n_layers": 1 << 10,
    "vocab_size": 1 << 24,
    "n_classes": 1 << 24,
    "input_dim": 1 << 16,
    "horizon": 1 << 20,
    "mlp_ratio": 64,
    "memory_tokens": 1 << 12,
    "segment_len": 1 << 20,
    "memory_bptt": 1 << 20,
}
MAX_EMBEDDING = 1 << 32  # vocab_size * d_model: 16 GiB of float32


@dataclass
class ModelConfig:
    """A stack of residual blocks around sequence mixers, and a head.

    layer: a registered layer name (``statewise models`` lists them).
    layers: a pattern of layer names cycled over the blocks (block i uses
        ``layers[i % len(layers)]``), e.g. Griffin's ["rglru", "rglru", "attention"];
        empty means every block uses ``layer``.
    layer_kwargs: extra constructor arguments of the layers. A key that names a registered
        layer holds a table of arguments for that layer only; other keys go to every layer.
    mlp_ratio: hidden width of each block's MLP over d_model; 0 means no MLP.
    mlp: "gelu" (W_2 gelu(W_1 x)), "geglu" (W_2 (gelu_tanh(W_g x) * W_1 x)) or "swiglu".
    norm: "rmsnorm", "rmsnorm_plus_one" (scale by 1 + w, as Gemma) or "layernorm".
    dropout: ordinary dropout on each block's mixer and MLP outputs (a new mask per element).
    locked_dropout: variational dropout (Gal & Ghahramani 2016, as AWD-LSTM's "locked"
        dropout, Merity et al. 2017) on the residual stream at every block's input and at the
        last block's output: one Bernoulli mask per sequence and channel, the same at every
        time step, in training mode only (0: off). It plays the part of AWD-LSTM's dropouti
        (the embedding output), dropouth (between layers) and dropout (the last output) at
        one rate; they use 0.4 / 0.25 / 0.4 on Penn Treebank.
    tie_embeddings: the language model's output matrix is its token embedding.
    embed_std: the token embedding starts N(0, embed_std^2). It sets how loud a token is in
        the residual stream against the blocks' outputs, and no single value suits every
        layer: on our synthetic tasks attention learns far faster with 1.0 than with
        GPT-2's 0.02, and Mamba does not learn induction heads with 1.0 (docs/arena.md,
        "Embedding initialisation"). Both default (None) to the first block's layer's
        choice (``SequenceMixer.embed_std`` and ``tie_embeddings``: 0.02 and tied, 1.0 and
        untied for attention); the resolved values are what a checkpoint records.
    embed_scale: the token embeddings are multiplied by this (Gemma uses sqrt(d_model)).
    logit_softcap: when > 0, logits become c * tanh(logits / c).
    head: "lm" (LanguageModel), "classifier" (ClassifierHead), "forecaster", or "rnn":
        a stacked torch.nn-style LSTM/GRU/RNN (``statewise.layers.LSTM`` ...) with
        input_dim inputs, d_model hidden units and n_layers layers, whose layer_kwargs are
        the drop-in's arguments (bias, bidirectional, proj_size, nonlinearity, batch_first);
        this is what ``statewise convert --from torch`` produces.
        "seq2seq", "ctc", "transducer", "tagger": the encoder-decoder, the two recognisers
        and the tagger, built from this config and ``head_kwargs``
        (statewise/models/sequence_heads.py lists the arguments; docs/seq2seq.md).
    head_kwargs: the arguments of a "seq2seq", "ctc", "transducer" or "tagger" head
        (e.g. ``{attention = "luong", bidirectional = true}``); empty for the other heads.
    vocab_size: token vocabulary for "lm" (and for a "classifier" over tokens); 0 for
        a classifier or forecaster over real-valued inputs of width ``input_dim``.
    memory_tokens: with M > 0 the language model is a Recurrent Memory Transformer
        (Bulatov et al. 2022; statewise/models/rmt.py, docs/models/rmt.md): the sequence is
        cut into segments of ``segment_len`` tokens, each run through the block stack as
        [M memory tokens, the segment, the same M memory tokens], and the outputs at the
        last M positions are the next segment's memory. 0: off (the plain model).
    segment_len: the segment length of a Recurrent Memory Transformer (required with
        memory_tokens > 0, and only then).
    memory_bptt: k > 0 cuts the gradient through the memory after every k segments of a
        forward (truncated backpropagation through segments); 0: no truncation.
    """

    layer: str = "mingru"
    d_model: int = 128
    n_layers: int = 2
    vocab_size: int = 256
    layers: list[str] = field(default_factory=list)
    layer_kwargs: dict[str, Any] = field(default_factory=dict)
    mlp_ratio: float = 4.0
    mlp: str = "gelu"
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    dropout: float = 0.0
    locked_dropout: float = 0.0
    tie_embeddings: bool | None = None
    embed_std: float | None = None
    embed_scale: float = 1.0
    logit_softcap: float = 0.0
    head: str = "lm"
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    n_classes: int = 0
    input_dim: int = 1
    horizon: int = 1
    memory_tokens: int = 0
    segment_len: int = 0
    memory_bptt: int = 0

    def __post_init__(self) -> None:
        check_finite_fields(self, "model")
        check_caps(self, "model", CAPS)
        if self.vocab_size * self.d_model > MAX_EMBEDDING:
            raise ConfigError(
                f"model.vocab_size x d_model = {self.vocab_size * self.d_model:,} floats in "
                f"the embedding alone; the cap is {MAX_EMBEDDING:,}"
            )
        if self.head == "rnn":
            self._check_torch_style_rnn()
        else:
            for name in sorted(set(self.layers) | {self.layer}):
                self._check_layer_kwargs(name)
        self._resolve_embedding()
        for name in ("d_model", "n_layers"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        for name, value, options in (
            ("head", self.head, HEADS),
            ("norm", self.norm, NORMS),
            ("mlp", self.mlp, MLPS),
        ):
            if value not in options:
                raise ConfigError(f"model.{name} must be one of {options}, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.locked_dropout < 1.0:
            raise ConfigError(f"model.locked_dropout must be in [0, 1), got {self.locked_dropout}")
        if self.mlp_ratio < 0 or self.logit_softcap < 0 or self.norm_eps <= 0:
            raise ConfigError("model.mlp_ratio and logit_softcap must be >= 0, norm_eps > 0")
        if self.head == "lm" and self.vocab_size <= 0:
            raise ConfigError("model.vocab_size must be positive for a language model")
        if self.head == "classifier" and self.n_classes < 2:
            raise ConfigError("model.n_classes must be >= 2 for a classifier")
        if self.head == "forecaster" and (self.horizon <= 0 or self.input_dim <= 0):
            raise ConfigError("model.horizon and model.input_dim must be positive for a forecaster")
        if self.head in SEQUENCE_HEADS:
            from statewise.models.sequence_heads import check_head_config

            check_head_config(self)
        elif self.head_kwargs:
            raise ConfigError(
                f"model.head_kwargs is for the heads {SEQUENCE_HEADS}; head {self.head!r} "
                "takes none"
            )
        self._check_memory()

    def _check_memory(self) -> None:
        """The Recurrent Memory Transformer's fields (memory_tokens, segment_len, memory_bptt)."""
        for name in ("memory_tokens", "segment_len", "memory_bptt"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.{name} must be >= 0, got {getattr(self, name)}")
        if self.memory_tokens == 0:
            if self.segment_len or self.memory_bptt:
                raise ConfigError(
                    "model.segment_len and model.memory_bptt need model.memory_tokens > 0 "
                    "(a Recurrent Memory Transformer)"
                )
            return
        if self.head != "lm":
            raise ConfigError(f"model.memory_tokens needs head = 'lm', got {self.head!r}")
        if self.segment_len <= 0:
            raise ConfigError("model.memory_tokens > 0 needs model.segment_len > 0")

    def layer_at(self, index: int) -> str:
        """The layer name of block ``index``."""
        return self.layers[index % len(self.layers)] if self.layers else self.layer

    def kwargs_for(self, name: str) -> dict[str, Any]:
        """The constructor arguments of layer ``name``: shared ones, then its own table."""
        from statewise.layers import names

        shared = {k: v for k, v in self.layer_kwargs.items() if k not in names()}
        own = self.layer_kwargs.get(name, {})
        return {**shared, **own}

    def _resolve_embedding(self) -> None:
        """Fill an unset embed_std / tie_embeddings from the first block's layer."""
        from statewise.layers import SequenceMixer, info

        # a torch-style "rnn" head has no token embedding; it records the base defaults
        layer_class = SequenceMixer if self.head == "rnn" else info(self.layer_at(0)).cls
        if self.embed_std is None:
            self.embed_std = float(layer_class.embed_std)
        if self.tie_embeddings is None:
            self.tie_embeddings = bool(layer_class.tie_embeddings)
        if self.embed_std <= 0:
            raise ConfigError(f"model.embed_std must be positive, got {self.embed_std}")

    def _check_torch_style_rnn(self) -> None:
        from statewise.layers.classic import TORCH_STYLE

        if self.layer not in TORCH_STYLE or self.layers:
            raise ConfigError(f"model.head 'rnn' takes layer = one of {tuple(TORCH_STYLE)}")
        accepted = inspect.signature(TORCH_STYLE[self.layer].__init__).parameters
        for key in self.layer_kwargs:
            if key not in accepted or key in ("self", "input_size", "hidden_size", "num_layers"):
                raise ConfigError(
                    f"model.layer_kwargs.{key}: not an argument of "
                    f"statewise.layers.{TORCH_STYLE[self.layer].__name__}"
                )

    def _check_layer_kwargs(self, name: str) -> None:
        from statewise.layers import info, names

        layer_class = info(name).cls  # ValueError naming the choices if unknown
        accepted = inspect.signature(layer_class.__init__).parameters
        options = [p for p in accepted if p not in ("self", "d_model", "layer_index", "n_layers")]
        own = self.layer_kwargs.get(name, {})
        if not isinstance(own, dict):
            raise ConfigError(f"model.layer_kwargs.{name} must be a table of arguments")
        for key in {**{k: 1 for k in self.layer_kwargs if k not in names()}, **own}:
            if key not in options:
                raise ConfigError(
                    f"model.layer_kwargs.{key}: layer {name!r} has no argument {key!r}; "
                    f"its arguments are {', '.join(options)}"
                )
