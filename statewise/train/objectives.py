"""What the trainer needs of each kind of model head: the count of loss units in a batch,
the summed loss of a batch, and the validation record.

A step's loss is the sum, over its micro-batches (and ranks), of each one's summed loss
divided by the units of the whole batch, so gradient accumulation and data parallelism
give the gradient of the whole batch's mean:

    head                 summed loss                                   units
    "lm"                 cross-entropy of the target tokens            targets not IGNORE
    "seq2seq"            teacher-forced cross-entropy after BOS        target tokens after BOS
    "ctc", "transducer"  -log P(y|x) / max(U, 1), over the lines       lines
    "tagger"             CRF -log P(tags|x) (or per-token CE)          real tokens

Validation records ``val_loss`` (that mean, in nats) and the head's headline metric
(``metric``): the language model's next-token accuracy (and bits per character or byte),
for seq2seq the exact match and character error rate of greedy decodes, for the
recognisers the label error rate (``val_cer``) and exact match of greedy decodes, for the
tagger token accuracy and the F1 of spans (runs of one tag other than the task's
``outside_tag``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from statewise.errors import ArgumentError, ConfigError
from statewise.models.config import ModelConfig
from statewise.models.decoding import greedy_decode
from statewise.tasks.base import IGNORE, Batch, Task, unpack_batch
from statewise.tasks.seq_metrics import character_error_rate, exact_match, span_f1, token_accuracy
from statewise.tasks.transduction import EOS, PAD
from statewise.train.evaluate import at_lengths, evaluate, evaluate_lengths, token_loss

DECODE_MARGIN = 10  # greedy seq2seq decodes stop at the longest reference + this many tokens


class LanguageModelObjective:
    """Next-token prediction (model.head "lm"), with state passing and resets."""

    metric = "accuracy"
    no_answer = 0.0  # the metric of a length the model cannot answer (overflow)
    language_model = True

    def check(self, model: ModelConfig, task: Task) -> None:
        if getattr(task, "heads", ("lm",)) != ("lm",):
            raise ConfigError(f"data.task needs model.head one of {task.heads}, got 'lm'")
        if model.vocab_size < task.vocab_size:
            raise ConfigError(
                f"model.vocab_size {model.vocab_size} is smaller than the "
                f"task's vocabulary {task.vocab_size}"
            )

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def units(self, batch: Batch) -> int:
        return int((batch[1] != IGNORE).sum())

    def loss_sum(
        self, net: nn.Module, batch: Batch, state: Any, return_state: bool, label_smoothing: float
    ) -> tuple[torch.Tensor, Any]:
        inputs, targets, resets = unpack_batch(batch)
        returned = net(inputs, state=state, return_state=return_state, resets=resets)
        logits, final = returned if return_state else (returned, None)
        return token_loss(logits, targets, label_smoothing) * self.units(batch), final

    def evaluate(
        self, model: nn.Module, task: Task, batch_size: int, n_batches: int
    ) -> dict[str, float]:
        return evaluate(model, task, batch_size, n_batches)

    def test(
        self, model: nn.Module, task: Task, lengths: list[int], batch_size: int, n_batches: int
    ) -> dict[int, float | None]:
        return evaluate_lengths(model, task, lengths, batch_size, n_batches)


class SummedLoss(nn.Module):
    """``model.loss(*batch, reduction="sum")`` as a module's forward: what DDP wraps, so the
    loss is computed through the module whose gradients it averages."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self.model.loss(*batch, reduction="sum")


class SequenceObjective:
    """The shared part of the seq2seq, recogniser and tagger heads: the model's own
    ``loss(*batch, reduction)``, no carried state, and scores from decoded batches."""

    metric = ""
    no_answer = 0.0  # the metric of a length the model cannot answer (overflow)
    language_model = False

    def check(self, model: ModelConfig, task: Task) -> None:
        heads = getattr(task, "heads", ("lm",))
        if model.head not in heads:
            raise ConfigError(
                f"data.task {type(task).__name__} needs model.head one of {heads}, "
                f"got {model.head!r}"
            )
        for name in ("vocab_size", "n_classes", "input_dim"):
            want = getattr(task, name, None)
            if want is not None and getattr(model, name) != want and self._checked(name, model):
                raise ConfigError(
                    f"model.{name} must be {want} for this task, got {getattr(model, name)}"
                )

    def _checked(self, name: str, model: ModelConfig) -> bool:
        """Whether model.``name`` must equal the task's (input_dim only matters for features)."""
        return name != "input_dim" or model.vocab_size == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        return SummedLoss(model)

    def loss_sum(
        self, net: nn.Module, batch: Batch, state: Any, return_state: bool, label_smoothing: float
    ) -> tuple[torch.Tensor, None]:
        return net(*batch), None

    def units(self, batch: Batch) -> int:
        raise NotImplementedError

    def scores(self, model: nn.Module, batches: list[Batch]) -> dict[str, float]:
        raise NotImplementedError

    @torch.no_grad()
    def _score(self, model: nn.Module, batches: list[Batch], prefix: str) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            total = sum(float(model.loss(*b, reduction="sum")) for b in batches)
            units = sum(self.units(b) for b in batches)
            scores = self.scores(model, batches)
        finally:
            model.train(was_training)
        scores = {"loss": total / max(units, 1), **scores}
        return {prefix + name: value for name, value in scores.items()}

    def evaluate(
        self, model: nn.Module, task: Task, batch_size: int, n_batches: int
    ) -> dict[str, float]:
        return self._score(model, task.eval_batches(batch_size, n_batches), "val_")

    def test(
        self, model: nn.Module, task: Task, lengths: list[int], batch_size: int, n_batches: int
    ) -> dict[int, float | None]:
        if lengths and not hasattr(task, "test_batches"):
            raise ArgumentError(f"task {type(task).__name__} has no test split at other lengths")
        return at_lengths(
            lambda n: self._score(model, task.test_batches(batch_size, n_batches, n), "")[
                self.metric
            ],
            lengths,
        )


class Seq2SeqObjective(SequenceObjective):
    metric = "exact_match"

    def units(self, batch: Batch) -> int:
        return int((batch[1][:, 1:] != PAD).sum())

    def scores(self, model: nn.Module, batches: list[Batch]) -> dict[str, float]:
        want, got = [], []
        for source, target in batches:
            mask = source != PAD
            decoded, _ = greedy_decode(model, source, mask, target.shape[1] + DECODE_MARGIN)
            got += decoded
            want += [_until_eos(row[1:].tolist()) for row in target]
        return {"exact_match": exact_match(want, got), "cer": character_error_rate(want, got)}


class RecognizerObjective(SequenceObjective):
    metric = "cer"
    no_answer = 1.0  # the character error rate of an empty transcript

    def units(self, batch: Batch) -> int:
        return batch[0].shape[0]

    def scores(self, model: nn.Module, batches: list[Batch]) -> dict[str, float]:
        want, got = [], []
        for x, lengths, labels, label_lengths in batches:
            got += model.decode(x, lengths)
            want += [row[:n].tolist() for row, n in zip(labels, label_lengths, strict=True)]
        return {"cer": character_error_rate(want, got), "exact_match": exact_match(want, got)}


class TaggerObjective(SequenceObjective):
    metric = "accuracy"

    def __init__(self, outside_tag: int) -> None:
        self.outside_tag = outside_tag

    def units(self, batch: Batch) -> int:
        mask = batch[2] if len(batch) > 2 else None
        return batch[1].numel() if mask is None else int(mask.sum())

    def scores(self, model: nn.Module, batches: list[Batch]) -> dict[str, float]:
        want, got = [], []
        for batch in batches:
            x, tags, mask = (*batch, None)[:3]
            decoded = model.decode(x, mask)
            real = torch.ones_like(tags, dtype=torch.bool) if mask is None else mask
            for row in range(tags.shape[0]):
                want.append(tags[row][real[row]].tolist())
                got.append(decoded[row][real[row]].tolist())
        spans = span_f1(want, got, "runs", self.outside_tag)
        return {"accuracy": token_accuracy(want, got), "span_f1": spans.f1}


def _until_eos(ids: list[int]) -> list[int]:
    return ids[: ids.index(EOS)] if EOS in ids else ids


Objective = LanguageModelObjective | SequenceObjective


def objective_for(model: ModelConfig, task: Task) -> Objective:
    """The objective of ``model.head``, checked against ``task`` (ConfigError naming the
    field that does not fit)."""
    if model.head == "lm":
        objective: Objective = LanguageModelObjective()
    elif model.head == "seq2seq":
        objective = Seq2SeqObjective()
    elif model.head in ("ctc", "transducer"):
        objective = RecognizerObjective()
    elif model.head == "tagger":
        objective = TaggerObjective(getattr(task, "outside_tag", 0))
    else:
        raise ConfigError(
            "statewise train fits model.head 'lm', 'seq2seq', 'ctc', 'transducer' or 'tagger', "
            f"got {model.head!r}"
        )
    objective.check(model, task)
    return objective
