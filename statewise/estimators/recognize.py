"""Recognizer: fit / predict / evaluate / save / load a sequence recogniser (CTC or RNN
transducer) mapping sequences of feature vectors to label sequences.

    from statewise import Recognizer
    from statewise.tasks.digit_lines import digit_lines
    train, test = digit_lines("train", 4000), digit_lines("test", 1000)
    rec = Recognizer("lstm", head="ctc").fit(train.features, train.labels, budget_s=300)
    rec.predict(test.features)                 # [[5, 3, 10, ...], ...]
    rec.evaluate(test.features, test.labels)   # {"cer": ..., "exact_match": ...}

``x`` is a list of (T_i, F) arrays, or a padded (N, T, F) array with ``lengths`` (N,) (right
padding; None: every row has T frames). ``y`` is a list of label sequences, labels in
1..n_labels-1 (0 is the blank). Features are standardised per channel with the mean and
standard deviation of the training frames (padding excluded), as SequenceClassifier does.
Under the hood: :mod:`statewise.models.recognizer` (the heads, the encoder, the decoding),
trained by the shared loop (:mod:`statewise.estimators.fit`: AdamW, warm-up + cosine,
clipping; with ``val``, the weights of the best validation CER are kept). Each batch is cut
to its longest sequence.

"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from statewise.errors import ArgumentError, ArgumentTypeError, DataError
from statewise.estimators.fit import (
    DECODE_BATCH,
    as_tensor,
    check_finite,
    check_limits,
    unchanged_on_error,
)
from statewise.estimators.saved import SavedEstimator, optional_list, optional_tensor
from statewise.estimators.sequences import channel_statistics, features, item_tensor
from statewise.layers.checks import positive_int
from statewise.models.config import ModelConfig
from statewise.models.recognizer import HEADS, CTCRecognizer, TransducerRecognizer
from statewise.tasks.seq_metrics import character_error_rate, exact_match

__all__ = ["Recognizer"]


def label_sequences(y: Any, n: int, name: str) -> list[list[int]]:
    """A list of ``n`` label sequences (lists, arrays or tensors of ints; may be empty)."""
    if isinstance(y, str) or not isinstance(y, list | tuple):
        raise ArgumentTypeError(f"{name} must be a list of label sequences, got {type(y).__name__}")
    if len(y) != n:
        raise ArgumentError(f"{name} has {len(y)} label sequences, x has {n} sequences")
    out = []
    for i, labels in enumerate(y):
        t = item_tensor(labels, f"{name}[{i}]")
        if t.dim() != 1:
            raise ArgumentError(
                f"{name}[{i}] must be one sequence of labels, got shape {tuple(t.shape)}"
            )
        if t.numel() and (t.is_floating_point() or t.is_complex()):
            raise ArgumentTypeError(f"{name}[{i}] must hold integer labels, got {t.dtype}")
        out.append([int(v) for v in t.tolist()])
    return out


def _check_label_range(labels: list[list[int]], n_labels: int, name: str) -> None:
    for i, row in enumerate(labels):
        if any(v == 0 for v in row):
            raise ArgumentError(f"{name}[{i}] holds the blank 0; labels are 1..{n_labels - 1}")
        if any(v < 0 or v >= n_labels for v in row):
            raise ArgumentError(f"{name}[{i}] holds a label outside 1..{n_labels - 1}")


def ctc_frames_needed(labels: list[int]) -> int:
    """The fewest frames a CTC path for ``labels`` needs: one per label, and a blank
    between each two equal neighbours."""
    return len(labels) + sum(a == b for a, b in zip(labels, labels[1:]))


def _pad_labels(labels: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    label_lengths = torch.tensor([len(row) for row in labels])
    padded = torch.zeros(len(labels), max(1, int(label_lengths.max())), dtype=torch.long)
    for i, row in enumerate(labels):
        padded[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return padded, label_lengths


class Recognizer(SavedEstimator):
    """Transcribe feature sequences into label sequences (module docstring).

    encoder: a registered layer name. head: "ctc" or "transducer". bidirectional: each
    encoder block reads both ways (no streaming then). n_labels: the label count, blank
    included (labels 1..n_labels-1); None: max label + 1 of the training labels.
    prediction_layer / prediction_layers: the transducer's prediction network (default: the
    encoder's layer, 1 block). max_symbols_per_frame: the transducer's cap on labels
    emitted at one frame in greedy decoding (statewise.models.recognizer).
    **model_kwargs: any other ModelConfig field of the stacks (mlp_ratio, layer_kwargs, ...).
    """

    kind = "Recognizer"
    files = ("recognizer.json", "model.safetensors")

    def __init__(
        self,
        encoder: str = "lstm",
        head: str = "ctc",
        *,
        bidirectional: bool = False,
        d_model: int = 64,
        n_layers: int = 2,
        n_labels: int | None = None,
        prediction_layer: str | None = None,
        prediction_layers: int = 1,
        max_symbols_per_frame: int = 4,
        batch_size: int = 32,
        lr: float = 2e-3,
        weight_decay: float = 0.01,
        seed: int = 0,
        **model_kwargs: Any,
    ) -> None:
        if head not in HEADS:
            raise ArgumentError(f"head must be one of {HEADS}, got {head!r}")
        if not isinstance(bidirectional, bool):
            raise ArgumentTypeError(f"bidirectional must be a bool, got {bidirectional!r}")
        for name, value in (
            ("d_model", d_model),
            ("n_layers", n_layers),
            ("prediction_layers", prediction_layers),
            ("max_symbols_per_frame", max_symbols_per_frame),
            ("batch_size", batch_size),
        ):
            positive_int(name, value)
        if n_labels is not None and (positive_int("n_labels", n_labels) < 2):
            raise ArgumentError(f"n_labels must be >= 2 (the blank and a label), got {n_labels}")
        for name in ("head", "n_classes", "vocab_size", "input_dim"):
            if name in model_kwargs:
                raise ArgumentError(f"{name} is set by Recognizer, do not pass it")
        self.options = dict(
            encoder=encoder,
            head=head,
            bidirectional=bidirectional,
            d_model=d_model,
            n_layers=n_layers,
            n_labels=n_labels,
            prediction_layer=prediction_layer,
            prediction_layers=prediction_layers,
            max_symbols_per_frame=max_symbols_per_frame,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
            model_kwargs=model_kwargs,
        )
        self._configs(n_labels or 2, 1)  # unknown layers and arguments fail here, not at fit
        self.n_labels, self.input_dim = n_labels, None
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.model: CTCRecognizer | TransducerRecognizer | None = None
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
    ) -> Recognizer:
        """Train on feature sequences ``x`` and label sequences ``y``; stop at the first of
        epochs / max_steps / budget_s (10 epochs if none is given). ``val`` = (x, y) or
        (x, y, lengths): the weights of the best validation CER (greedy) are kept."""
        check_limits(epochs, max_steps, budget_s)
        values, lengths = features(x, lengths, "x", None)
        labels = label_sequences(y, len(values), "y")
        n_labels = self.options["n_labels"] or max(2, 1 + max(max(r, default=0) for r in labels))
        _check_label_range(labels, n_labels, "y")
        if self.options["head"] == "ctc":
            self._check_ctc_frames(labels, lengths)
        if val is not None:
            if not isinstance(val, tuple | list) or len(val) not in (2, 3):
                raise ArgumentError("val must be a tuple (x, y) or (x, y, lengths)")
            val_lengths = val[2] if len(val) == 3 else None
            val_x, val_lengths = features(val[0], val_lengths, "val x", values.shape[2])
            val_y = label_sequences(val[1], len(val_x), "val y")
            _check_label_range(val_y, n_labels, "val y")
        self.n_labels, self.input_dim = n_labels, int(values.shape[2])
        self.mean, self.std = channel_statistics(values, lengths)
        values = self._standardise(values)
        padded, label_lengths = _pad_labels(labels)
        torch.manual_seed(self.options["seed"])
        self.model = self._build()

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            frames, n = int(lengths[idx].max()), max(1, int(label_lengths[idx].max()))
            batch = values[idx, :frames], lengths[idx], padded[idx, :n], label_lengths[idx]
            return self.model.loss(*batch)

        def validate() -> tuple[str, float]:
            got = self._decode(val_x, val_lengths, beam=1)
            return "val_cer", character_error_rate(val_y, got)

        self._train(
            loss_fn,
            len(values),
            epochs=epochs,
            max_steps=max_steps,
            budget_s=budget_s,
            progress=progress,
            validate=None if val is None else validate,
        )
        return self

    # ---- inference -----------------------------------------------------------------------

    def predict(self, x: Any, *, lengths: Any = None, beam: int = 1) -> list[list[int]]:
        """The label sequence of each input: greedy decoding, or (CTC) prefix beam search
        with ``beam`` > 1 hypotheses kept."""
        self._require_fit("predict")
        positive_int("beam", beam)
        if beam > 1 and self.options["head"] != "ctc":
            raise ArgumentError("beam search is for head='ctc'; the transducer decodes greedily")
        values, lengths = features(x, lengths, "x", self.input_dim)
        return self._decode(values, lengths, beam)

    def evaluate(self, x: Any, y: Any, *, lengths: Any = None, beam: int = 1) -> dict[str, float]:
        """{"cer": label error rate (corpus edit distance / reference labels),
        "exact_match": the fraction of sequences transcribed without an error}."""
        got = self.predict(x, lengths=lengths, beam=beam)
        want = label_sequences(y, len(got), "y")
        return {"cer": character_error_rate(want, got), "exact_match": exact_match(want, got)}

    def stream(self, frames: Iterable[Any]) -> Iterator[list[int]]:
        """Transcribe one sequence as its frames arrive: for each frame (F,), the labels
        emitted at it (possibly none). Transducer with a causal encoder only; the encoder
        and the prediction network step, O(1) work and memory per frame."""
        self._require_fit("stream")
        if self.options["head"] != "transducer" or self.options["bidirectional"]:
            raise ArgumentError("stream needs head='transducer' and bidirectional=False")
        self.model.eval()
        state = self.model.init_stream(1)
        for i, frame in enumerate(frames):
            t, _ = as_tensor(frame, f"frame {i}")
            if tuple(t.shape) != (self.input_dim,):
                raise ArgumentError(
                    f"frame {i} must have shape ({self.input_dim},), got {tuple(t.shape)}"
                )
            t = t.float()
            check_finite(t, f"frame {i}")
            emitted, state = self.model.stream_step(self._standardise(t)[None], state)
            yield emitted[0]

    # ---- helpers -------------------------------------------------------------------------

    def _decode(self, values: torch.Tensor, lengths: torch.Tensor, beam: int) -> list[list[int]]:
        """The labels of unstandardised frames, DECODE_BATCH rows at a time."""
        self.model.eval()
        values = self._standardise(values)
        out: list[list[int]] = []
        for i in range(0, len(values), DECODE_BATCH):
            rows = slice(i, i + DECODE_BATCH)
            frames = int(lengths[rows].max())
            if self.options["head"] == "ctc":
                out += self.model.decode(values[rows, :frames], lengths[rows], beam)
            else:
                out += self.model.decode(values[rows, :frames], lengths[rows])
        return out

    def _standardise(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / self.std

    def _check_ctc_frames(self, labels: list[list[int]], lengths: torch.Tensor) -> None:
        for i, (row, n) in enumerate(zip(labels, lengths.tolist())):
            needed = ctc_frames_needed(row)
            if needed > n:
                raise DataError(
                    f"y[{i}] needs at least {needed} frames under CTC (its labels plus a blank "
                    f"between equal neighbours), x[{i}] has {n}"
                )

    def _configs(self, n_labels: int, input_dim: int) -> tuple[ModelConfig, ModelConfig]:
        opts = self.options
        common = dict(d_model=opts["d_model"], head="classifier", n_classes=n_labels)
        common.update(opts["model_kwargs"])
        encoder = ModelConfig(
            layer=opts["encoder"],
            n_layers=opts["n_layers"],
            vocab_size=0,
            input_dim=input_dim,
            **common,
        )
        prediction = ModelConfig(
            layer=opts["prediction_layer"] or opts["encoder"],
            n_layers=opts["prediction_layers"],
            vocab_size=n_labels,
            **common,
        )
        return encoder, prediction

    def _build(self) -> CTCRecognizer | TransducerRecognizer:
        opts = self.options
        encoder, prediction = self._configs(self.n_labels, self.input_dim)
        if opts["head"] == "ctc":
            return CTCRecognizer(encoder, opts["bidirectional"])
        return TransducerRecognizer(
            encoder,
            prediction,
            opts["bidirectional"],
            max_symbols_per_frame=opts["max_symbols_per_frame"],
        )

    def _fitted(self) -> dict[str, Any]:
        return {
            "n_labels": self.n_labels,
            "input_dim": self.input_dim,
            "mean": optional_list(self.mean),
            "std": optional_list(self.std),
        }

    def _restore(self, meta: dict[str, Any]) -> None:
        self.n_labels, self.input_dim = int(meta["n_labels"]), int(meta["input_dim"])
        self.mean, self.std = optional_tensor(meta["mean"]), optional_tensor(meta["std"])
