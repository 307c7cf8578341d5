"""SequenceTagger: fit / predict / evaluate / save / load a per-token tagger (a BiLSTM-CRF by
default; any registered layer, a CRF or a per-token softmax).

    from statewise import SequenceTagger
    from statewise.tasks.code_tagging import tagged_split
    chars, tags = tagged_split("train").windows(256, 4000)
    tagger = SequenceTagger("lstm").fit(chars, tags, budget_s=300)
    tagger.predict(test_chars)              # (N, T) tags, -1 at padding
    tagger.evaluate(test_chars, test_tags)  # {"token_accuracy", "span_f1", ...}

``x`` is token ids, a list of (T_i,) sequences or a padded (N, T) array with ``lengths``
(N,) (right padding; None: every row has T tokens), or real-valued features, (T_i, C) per
sequence or (N, T, C), standardised per channel with the training statistics. ``y`` holds
one tag per token in [0, n_tags), in the same form (a padded array's entries past each
row's length are ignored). ``predict`` answers in the form of ``x``: a list of tag lists
for a list, an (N, T) int64 array (numpy for numpy, a tensor for a tensor) with -1 at the
padding for a padded array. Under the hood: :class:`~statewise.models.tagger.TaggerModel`,
trained by the shared loop (:mod:`statewise.estimators.fit`; with ``val``, the weights of
the best validation token accuracy are kept). Span scores follow
:mod:`statewise.tasks.seq_metrics`: ``scheme="runs"`` (default) counts each maximal run of
one tag other than ``outside`` as a span; "bio" / "bioes" read the tags through
``tag_names`` (one "B-X"-style name per tag id).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from statewise.errors import ArgumentError, ArgumentTypeError
from statewise.estimators.fit import (
    DECODE_BATCH,
    check_limits,
    unchanged_on_error,
)
from statewise.estimators.saved import SavedEstimator, optional_list, optional_tensor
from statewise.estimators.sequences import (
    channel_statistics,
    features,
    pad_sequences,
    real_positions,
)
from statewise.layers.checks import positive_int
from statewise.models.config import ModelConfig
from statewise.models.tagger import PADDING_TAG, TaggerModel
from statewise.tasks.seq_metrics import SCHEMES, exact_match, span_f1, token_accuracy

__all__ = ["SequenceTagger"]


def _holds_integers(x: Any) -> bool:
    """Whether the inputs (a padded array, or a list whose first sequence is read) hold
    integers (token ids) rather than floating values (features)."""
    first = x[0] if isinstance(x, list | tuple) and x else x
    if isinstance(first, torch.Tensor):
        return not first.is_floating_point()
    return np.asarray(first).dtype.kind != "f"


def _as_lists(tags: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    return [row[:n] for row, n in zip(tags.tolist(), lengths.tolist())]


class SequenceTagger(SavedEstimator):
    """Tag every token of a sequence (module docstring).

    layer: a registered layer name. bidirectional: each block reads both ways (default) or
    only left to right. crf: a linear-chain CRF over the tags (default) or a per-token
    softmax. n_tags: None infers max(y) + 1 (at least 2) at fit. vocab_size: token input
    with ids in [0, vocab_size); input_dim: real-valued input with that many channels; at
    most one of them; with neither, fit reads x's dtype (integers: token ids, vocab_size =
    max id + 1; floating: features).
    **model_kwargs: any other ModelConfig field (mlp_ratio, layer_kwargs, ...).
    """

    kind = "SequenceTagger"
    files = ("tagger.json", "model.safetensors")

    def __init__(
        self,
        layer: str = "lstm",
        *,
        bidirectional: bool = True,
        crf: bool = True,
        d_model: int = 64,
        n_layers: int = 1,
        n_tags: int | None = None,
        vocab_size: int | None = None,
        input_dim: int | None = None,
        batch_size: int = 32,
        lr: float = 2e-3,
        weight_decay: float = 0.01,
        seed: int = 0,
        **model_kwargs: Any,
    ) -> None:
        for name, value in (("bidirectional", bidirectional), ("crf", crf)):
            if not isinstance(value, bool):
                raise ArgumentTypeError(f"{name} must be a bool, got {value!r}")
        for name, value in (
            ("d_model", d_model),
            ("n_layers", n_layers),
            ("batch_size", batch_size),
        ):
            positive_int(name, value)
        if n_tags is not None and positive_int("n_tags", n_tags) < 2:
            raise ArgumentError(f"n_tags must be >= 2, got {n_tags}")
        for name, value in (("vocab_size", vocab_size), ("input_dim", input_dim)):
            if value is not None:
                positive_int(name, value)
        if vocab_size is not None and input_dim is not None:
            raise ArgumentError("give vocab_size (token input) or input_dim (features), not both")
        for name in ("head", "n_classes"):
            if name in model_kwargs:
                raise ArgumentError(f"{name} is set by SequenceTagger, do not pass it")
        self.options = dict(
            layer=layer,
            bidirectional=bidirectional,
            crf=crf,
            d_model=d_model,
            n_layers=n_layers,
            n_tags=n_tags,
            vocab_size=vocab_size,
            input_dim=input_dim,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
            model_kwargs=model_kwargs,
        )
        self.n_tags, self.vocab_size, self.input_dim = n_tags, vocab_size, input_dim
        self._config()  # unknown layers and arguments fail here, not at fit
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.model: TaggerModel | None = None
        self.history: list[dict[str, float]] = []

    # ---- training ------------------------------------------------------------------------

    @unchanged_on_error
    def fit(
        self,
        x: Any,
        y: Any,
        val: tuple | None = None,
        *,
        lengths: Any = None,
        epochs: int | None = None,
        max_steps: int | None = None,
        budget_s: float | None = None,
        progress: bool = True,
    ) -> SequenceTagger:
        """Train on inputs ``x`` and per-token tags ``y``; stop at the first of epochs /
        max_steps / budget_s (10 epochs if none is given). ``val`` = (x, y) or (x, y,
        lengths): the weights of the best validation token accuracy are kept."""
        check_limits(epochs, max_steps, budget_s)
        opts = self.options
        tokens = opts["vocab_size"] is not None or (
            opts["input_dim"] is None and _holds_integers(x)
        )
        inputs, lengths = self._inputs(
            x, lengths, "x", tokens, opts["vocab_size"], opts["input_dim"]
        )
        vocab_size = None
        if tokens:
            vocab_size = (
                opts["vocab_size"]
                or int(inputs[real_positions(lengths, inputs.shape[1])].max()) + 1
            )
        tags = self._tags(y, lengths, inputs.shape[1], "y")
        n_tags = opts["n_tags"] or max(2, int(tags.max()) + 1)
        self._check_tag_range(tags, lengths, n_tags, "y")
        if val is not None:
            if not isinstance(val, tuple | list) or len(val) not in (2, 3):
                raise ArgumentError("val must be a tuple (x, y) or (x, y, lengths)")
            val_lengths = val[2] if len(val) == 3 else None
            width = None if tokens else inputs.shape[2]
            val_in, val_lengths = self._inputs(
                val[0], val_lengths, "val x", tokens, vocab_size, width
            )
            val_tags = self._tags(val[1], val_lengths, val_in.shape[1], "val y")
            self._check_tag_range(val_tags, val_lengths, n_tags, "val y")
        self.n_tags, self.vocab_size = n_tags, vocab_size
        self.input_dim = None if vocab_size else int(inputs.shape[2])
        self.mean, self.std = (None, None) if vocab_size else channel_statistics(inputs, lengths)
        inputs = self._standardise(inputs)
        torch.manual_seed(opts["seed"])
        self.model = self._build()

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            width = int(lengths[idx].max())
            mask = real_positions(lengths[idx], width)
            return self.model.loss(
                inputs[idx, :width], tags[idx, :width], None if bool(mask.all()) else mask
            )

        def validate() -> tuple[str, float]:
            got = _as_lists(self._decode(val_in, val_lengths), val_lengths)
            return "val_error", 1.0 - token_accuracy(_as_lists(val_tags, val_lengths), got)

        self._train(
            loss_fn,
            len(inputs),
            epochs=epochs,
            max_steps=max_steps,
            budget_s=budget_s,
            progress=progress,
            validate=None if val is None else validate,
        )
        return self

    # ---- inference -----------------------------------------------------------------------

    def predict(self, x: Any, *, lengths: Any = None) -> Any:
        """The tags of each token, in the form of ``x`` (module docstring)."""
        self._require_fit("predict")
        inputs, lengths = self._fitted_inputs(x, lengths)
        tags = self._decode(inputs, lengths)
        if isinstance(x, np.ndarray):
            return tags.numpy()
        return tags if isinstance(x, torch.Tensor) else _as_lists(tags, lengths)

    def evaluate(
        self,
        x: Any,
        y: Any,
        *,
        lengths: Any = None,
        scheme: str = "runs",
        outside: int = 0,
        tag_names: Sequence[str] | None = None,
    ) -> dict[str, float]:
        """{"token_accuracy", "span_precision", "span_recall", "span_f1", "exact_match"}.
        Spans by ``scheme`` ("runs", "bio", "bioes"); ``outside``: the tag id outside every
        span; ``tag_names``: one name per tag id, needed by "bio" and "bioes"."""
        self._require_fit("evaluate")
        if scheme not in SCHEMES:
            raise ArgumentError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        if isinstance(outside, bool) or not isinstance(outside, int):
            raise ArgumentTypeError(f"outside must be a tag id (an int), got {outside!r}")
        if not 0 <= outside < self.n_tags:
            raise ArgumentError(f"outside must be a tag id in [0, {self.n_tags}), got {outside}")
        if tag_names is None and scheme != "runs":
            raise ArgumentError(f"scheme {scheme!r} reads tags as B-X / I-X names: give tag_names")
        if tag_names is not None and len(tag_names) != self.n_tags:
            raise ArgumentError(f"tag_names must hold {self.n_tags} names, got {len(tag_names)}")
        inputs, lengths = self._fitted_inputs(x, lengths)
        tags = self._tags(y, lengths, inputs.shape[1], "y")
        self._check_tag_range(tags, lengths, self.n_tags, "y")
        want = _as_lists(tags, lengths)
        got = _as_lists(self._decode(inputs, lengths), lengths)
        if tag_names is not None:
            names = list(tag_names)
            want = [[names[t] for t in row] for row in want]
            got = [[names[t] for t in row] for row in got]
            outside = names[outside]
        spans = span_f1(want, got, scheme, outside)
        return {
            "token_accuracy": token_accuracy(want, got),
            "span_precision": spans.precision,
            "span_recall": spans.recall,
            "span_f1": spans.f1,
            "exact_match": exact_match(want, got),
        }

    # ---- helpers -------------------------------------------------------------------------

    def _inputs(
        self,
        x: Any,
        lengths: Any,
        name: str,
        tokens: bool,
        vocab_size: int | None,
        input_dim: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (N, T) int64, in [0, vocab_size) when it is given, or features
        (N, T, C) float32; and the lengths (N,)."""
        if not tokens:
            return features(x, lengths, name, input_dim)
        ids, lengths = pad_sequences(x, lengths, name, 1)
        if ids.is_floating_point():
            raise ArgumentTypeError(f"{name} must hold integer token ids, got floating values")
        real = ids[real_positions(lengths, ids.shape[1])]
        if int(real.min()) < 0:
            raise ArgumentError(f"{name} token ids must be >= 0")
        if vocab_size is not None and int(real.max()) >= vocab_size:
            raise ArgumentError(f"{name} token ids must lie in [0, {vocab_size})")
        return ids, lengths

    def _fitted_inputs(self, x: Any, lengths: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """x read as the fitted model takes it (token ids or features of its width)."""
        tokens = self.vocab_size is not None
        return self._inputs(x, lengths, "x", tokens, self.vocab_size, self.input_dim)

    @staticmethod
    def _tags(y: Any, lengths: torch.Tensor, width: int, name: str) -> torch.Tensor:
        """y -> (N, width) int64 tags, entries past each row's length set to 0."""
        if isinstance(y, np.ndarray | torch.Tensor):
            if len(y) != len(lengths):
                raise ArgumentError(f"{name} has {len(y)} rows, x has {len(lengths)}")
            if y.ndim != 2 or y.shape[1] < int(lengths.max()):
                raise ArgumentError(
                    f"{name} must have shape (N, T) with T >= the longest input "
                    f"({int(lengths.max())}), got {tuple(y.shape)}"
                )
            tags, _ = pad_sequences(y, None, name, 1)
        else:
            tags, tag_lengths = pad_sequences(y, None, name, 1)
            if len(tag_lengths) != len(lengths):
                raise ArgumentError(
                    f"{name} has {len(tag_lengths)} sequences, x has {len(lengths)}"
                )
            differ = torch.nonzero(tag_lengths != lengths).flatten()
            if len(differ):
                i = int(differ[0])
                raise ArgumentError(
                    f"{name}[{i}] has {int(tag_lengths[i])} tags, x[{i}] has "
                    f"{int(lengths[i])} tokens"
                )
        if tags.is_floating_point():
            raise ArgumentTypeError(f"{name} must hold integer tags, got floating values")
        tags = tags[:, :width]
        if tags.shape[1] < width:
            tags = torch.nn.functional.pad(tags, (0, width - tags.shape[1]))
        return tags.masked_fill(~real_positions(lengths, width), 0)

    @staticmethod
    def _check_tag_range(tags: torch.Tensor, lengths: torch.Tensor, n_tags: int, name: str) -> None:
        real = tags[real_positions(lengths, tags.shape[1])]
        if int(real.min()) < 0 or int(real.max()) >= n_tags:
            raise ArgumentError(f"{name} tags must lie in [0, {n_tags})")

    def _decode(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Tags (N, T) of unstandardised inputs, -1 at the padding, in batches of
        DECODE_BATCH rows."""
        self.model.eval()
        inputs = self._standardise(inputs)
        out = torch.full(inputs.shape[:2], PADDING_TAG, dtype=torch.long)
        for i in range(0, len(inputs), DECODE_BATCH):
            rows = slice(i, i + DECODE_BATCH)
            width = int(lengths[rows].max())
            mask = real_positions(lengths[rows], width)
            out[rows, :width] = self.model.decode(
                inputs[rows, :width], None if bool(mask.all()) else mask
            )
        return out

    def _standardise(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs if self.mean is None else (inputs - self.mean) / self.std

    def _config(self) -> ModelConfig:
        opts = self.options
        return ModelConfig(
            layer=opts["layer"],
            d_model=opts["d_model"],
            n_layers=opts["n_layers"],
            head="classifier",
            n_classes=self.n_tags or 2,
            vocab_size=self.vocab_size or 0,
            input_dim=self.input_dim or 1,
            **opts["model_kwargs"],
        )

    def _build(self) -> TaggerModel:
        return TaggerModel(self._config(), self.options["bidirectional"], self.options["crf"])

    def _fitted(self) -> dict[str, Any]:
        return {
            "n_tags": self.n_tags,
            "vocab_size": self.vocab_size,
            "input_dim": self.input_dim,
            "mean": optional_list(self.mean),
            "std": optional_list(self.std),
        }

    def _restore(self, meta: dict[str, Any]) -> None:
        self.n_tags, self.vocab_size = meta["n_tags"], meta["vocab_size"]
        self.input_dim = meta["input_dim"]
        self.mean, self.std = optional_tensor(meta["mean"]), optional_tensor(meta["std"])
