"""Seq2Seq: fit / predict / evaluate / save / load an encoder-decoder on strings.

    from statewise import Seq2Seq
    from statewise.tasks.transduction import make_pairs
    train = make_pairs("date", 20000, seed=0)
    s = Seq2Seq(encoder="lstm", attention="bahdanau").fit(*zip(*train), max_steps=3000)
    s.predict(["3 March 1987"])                 # ["1987-03-03"]
    s.plot_alignment("3 March 1987", "align.png")

Under the hood: a :class:`~statewise.models.seq2seq.Seq2SeqModel` over the characters of the
training strings (one vocabulary for both sides: 0 padding, 1 BOS, 2 EOS, then the
characters, sorted), trained with teacher forcing and cross-entropy by the shared loop
(:mod:`statewise.estimators.fit`: AdamW, warm-up + cosine, clipping, best validation
weights kept). Decoding runs the decoder in step mode: greedy by default, beam search with
``beam`` > 1 (length-normalised, :mod:`statewise.models.decoding`). Outputs are at most
``max_output_len`` characters (default: 2 x the longest training target + 10).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from statewise.errors import ArgumentError, ArgumentTypeError
from statewise.estimators.fit import (
    DECODE_BATCH,
    check_limits,
    unchanged_on_error,
)
from statewise.estimators.saved import SavedEstimator
from statewise.models.config import ModelConfig
from statewise.models.decoding import beam_search, greedy_decode
from statewise.models.seq2seq import ATTENTIONS, Seq2SeqModel
from statewise.tasks.seq_metrics import character_error_rate, exact_match
from statewise.tasks.transduction import CharVocab

__all__ = ["Seq2Seq"]


def _strings(value: Any, name: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray):
        raise ArgumentTypeError(f"{name} must be a list of strings, got {type(value).__name__}")
    out = list(value)
    bad = next((v for v in out if not isinstance(v, str)), None)
    if bad is not None:
        raise ArgumentTypeError(f"{name} must hold strings, got a {type(bad).__name__}")
    if not out:
        raise ArgumentError(f"{name} is empty")
    if name.endswith("sources") and not all(out):
        raise ArgumentError(f"{name} holds an empty string: a source needs a character")
    return out


class Seq2Seq(SavedEstimator):
    """Map strings to strings (module docstring).

    encoder, decoder: registered layer names (decoder defaults to the encoder's layer; it
    must have a ``step``). attention: "bahdanau", "luong" or None. bidirectional: the
    encoder reads the source both ways (:mod:`statewise.models.encoder`). **model_kwargs: any
    other ModelConfig field of both stacks (mlp_ratio, layer_kwargs, ...).
    """

    kind = "Seq2Seq"
    files = ("seq2seq.json", "model.safetensors")

    def __init__(
        self,
        encoder: str = "lstm",
        decoder: str | None = None,
        attention: str | None = "bahdanau",
        *,
        bidirectional: bool = False,
        d_model: int = 128,
        encoder_layers: int = 1,
        decoder_layers: int = 1,
        batch_size: int = 64,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        max_output_len: int | None = None,
        seed: int = 0,
        **model_kwargs: Any,
    ) -> None:
        if attention not in ATTENTIONS:
            raise ArgumentError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        for name, value in (
            ("d_model", d_model),
            ("encoder_layers", encoder_layers),
            ("decoder_layers", decoder_layers),
            ("batch_size", batch_size),
            ("max_output_len", 1 if max_output_len is None else max_output_len),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ArgumentError(f"{name} must be a positive int, got {value!r}")
        self.options = dict(
            encoder=encoder,
            decoder=decoder or encoder,
            attention=attention,
            bidirectional=bidirectional,
            d_model=d_model,
            encoder_layers=encoder_layers,
            decoder_layers=decoder_layers,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            max_output_len=max_output_len,
            seed=seed,
            model_kwargs=model_kwargs,
        )
        self.vocab: CharVocab | None = None
        self.model: Seq2SeqModel | None = None
        self.history: list[dict[str, float]] = []

    # ---- training ------------------------------------------------------------------------

    @unchanged_on_error
    def fit(
        self,
        sources: Sequence[str],
        targets: Sequence[str],
        val: tuple[Sequence[str], Sequence[str]] | None = None,
        *,
        epochs: int | None = None,
        max_steps: int | None = None,
        budget_s: float | None = None,
        progress: bool = True,
    ) -> Seq2Seq:
        """Train on pairs (sources[i], targets[i]); stop at the first of epochs / max_steps /
        budget_s (10 epochs if none is given). With ``val`` = (sources, targets), the
        weights with the best validation exact match (greedy) are kept."""
        check_limits(epochs, max_steps, budget_s)
        src, tgt = _strings(sources, "sources"), _strings(targets, "targets")
        if len(src) != len(tgt):
            raise ArgumentError(f"sources has {len(src)} strings, targets {len(tgt)}")
        if val is not None:
            if not isinstance(val, tuple | list) or len(val) != 2:
                raise ArgumentError("val must be a tuple (sources, targets)")
            val_src, val_tgt = _strings(val[0], "val sources"), _strings(val[1], "val targets")
        self.vocab = CharVocab("".join(sorted(set("".join(src) + "".join(tgt)))))
        if self.options["max_output_len"] is None:
            self.options["max_output_len"] = 2 * max(map(len, tgt)) + 10
        source_ids = self.vocab.batch(src)
        target = self.vocab.batch(tgt, bos=True, eos=True)
        torch.manual_seed(self.options["seed"])
        self.model = self._build()

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            return self.model.loss(source_ids[idx], target[idx])

        def validate() -> tuple[str, float]:
            score = self.evaluate(val_src, val_tgt)["exact_match"]
            return "val_error", 1.0 - score

        self._train(
            loss_fn,
            len(src),
            epochs=epochs,
            max_steps=max_steps,
            budget_s=budget_s,
            progress=progress,
            validate=None if val is None else validate,
        )
        return self

    # ---- inference -----------------------------------------------------------------------

    @torch.no_grad()
    def predict_with_alignments(
        self, sources: Sequence[str], *, beam: int = 1, length_penalty: float = 1.0
    ) -> tuple[list[str], list[np.ndarray | None]]:
        """Outputs, and each output's attention weights (output chars + EOS, source chars)
        as numpy arrays (None without attention)."""
        self._require_fit("predict")
        src = _strings(sources, "sources")
        self.model.eval()
        outputs, aligns = [], []
        for i in range(0, len(src), DECODE_BATCH):
            chunk = src[i : i + DECODE_BATCH]
            ids = self.vocab.batch(chunk)
            mask, max_len = ids != 0, self.options["max_output_len"]
            if beam == 1:
                seqs, align = greedy_decode(self.model, ids, mask, max_len)
            else:
                seqs, align = beam_search(self.model, ids, mask, beam, max_len, length_penalty)
            outputs += [self.vocab.decode(s) for s in seqs]
            aligns += [None if a is None else a.numpy() for a in align]
        return outputs, aligns

    def predict(
        self, sources: Sequence[str], *, beam: int = 1, length_penalty: float = 1.0
    ) -> list[str]:
        """The output string of each source (greedy, or beam search with ``beam`` > 1)."""
        return self.predict_with_alignments(sources, beam=beam, length_penalty=length_penalty)[0]

    def evaluate(
        self, sources: Sequence[str], targets: Sequence[str], *, beam: int = 1
    ) -> dict[str, float]:
        """{"exact_match", "cer"} (character error rate, corpus level) of the predictions."""
        want = _strings(targets, "targets")
        got = self.predict(sources, beam=beam)
        if len(got) != len(want):
            raise ArgumentError(f"sources has {len(got)} strings, targets {len(want)}")
        return {"exact_match": exact_match(want, got), "cer": character_error_rate(want, got)}

    def plot_alignment(self, source: str, path: str | Path, *, beam: int = 1) -> str:
        """Draw the attention weights of ``source``'s translation as a heat map (PNG at
        ``path``), Bahdanau et al.'s figure: source characters across, output down.
        Returns the output string."""
        (output,), (weights,) = self.predict_with_alignments([source], beam=beam)
        if weights is None:
            raise ArgumentError("this Seq2Seq has no attention (attention=None): no alignment")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = list(output) + ["<eos>"]
        fig, ax = plt.subplots(figsize=(0.3 * len(source) + 1.5, 0.3 * len(rows) + 1.2))
        ax.imshow(weights, cmap="gray_r", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(source)), list(source))
        ax.set_yticks(range(len(rows)), rows)
        ax.set_xlabel("source")
        ax.set_ylabel("output")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return output

    # ---- persistence ---------------------------------------------------------------------

    def _fitted(self) -> dict[str, Any]:
        return {"characters": self.vocab.characters}

    def _restore(self, meta: dict[str, Any]) -> None:
        self.vocab = CharVocab(str(meta["characters"]))

    # ---- helpers -------------------------------------------------------------------------

    def _build(self) -> Seq2SeqModel:
        opts = self.options
        common = dict(d_model=opts["d_model"], vocab_size=self.vocab.size, **opts["model_kwargs"])
        encoder = ModelConfig(layer=opts["encoder"], n_layers=opts["encoder_layers"], **common)
        decoder = ModelConfig(layer=opts["decoder"], n_layers=opts["decoder_layers"], **common)
        return Seq2SeqModel(encoder, decoder, opts["attention"], opts["bidirectional"])
