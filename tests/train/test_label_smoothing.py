"""train.label_smoothing: the training loss against the formula written out by hand, the
trainer using it, validation loss left plain, and bad values refused."""

from __future__ import annotations

import pytest
import torch

from statewise.tasks.base import IGNORE
from statewise.train.config import ConfigError, config_from_dict, load_config
from statewise.train.evaluate import token_loss
from statewise.train.trainer import train


def _smoothed_by_hand(logits: torch.Tensor, targets: torch.Tensor, e: float) -> torch.Tensor:
    """(1 - e) * CE + e * mean over the V tokens of -log p, averaged over kept positions,
    in float64 with an explicit loop over positions."""
    log_p = torch.log_softmax(logits.double(), dim=-1)
    total, count = 0.0, 0
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            target = int(targets[b, t])
            if target == IGNORE:
                continue
            row = log_p[b, t]
            total += -(1 - e) * row[target] - e * row.mean()
            count += 1
    return total / count


@pytest.mark.parametrize("e", [0.0, 0.1, 0.5])
def test_loss_matches_the_formula(e):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g) * 3
    targets = torch.randint(0, 11, (3, 7), generator=g)
    targets[0, :4] = IGNORE
    targets[2, 5] = IGNORE
    got = token_loss(logits, targets, label_smoothing=e)
    # the loss is float32: compare at float32's default tolerances, not float64's
    torch.testing.assert_close(got, _smoothed_by_hand(logits, targets, e).float())


def test_smoothing_bounds_the_best_margin():
    """With e > 0 a larger logit on the target stops paying: the loss has a minimum at a
    finite margin, where plain cross-entropy keeps falling (why it is offered)."""
    targets = torch.tensor([[2]])

    def loss(margin: float, e: float) -> float:
        logits = torch.zeros(1, 1, 5)
        logits[0, 0, 2] = margin
        return token_loss(logits, targets, label_smoothing=e).item()

    margins = [2.0, 4.0, 8.0, 16.0, 32.0]
    plain = [loss(m, 0.0) for m in margins]
    smooth = [loss(m, 0.1) for m in margins]
    assert all(a > b for a, b in zip(plain, plain[1:]))
    best = smooth.index(min(smooth))
    assert 0 < best < len(margins) - 1 and smooth[-1] > smooth[best] + 0.5


def test_trainer_smooths_the_training_loss_only(tiny_config, tmp_path, monkeypatch):
    from statewise.train import evaluate, objectives

    seen = {"train": [], "val": []}

    def recorder(kind, loss_fn):
        def record(logits, targets, label_smoothing=0.0):
            seen[kind].append(label_smoothing)
            return loss_fn(logits, targets, label_smoothing)

        return record

    monkeypatch.setattr(objectives, "token_loss", recorder("train", token_loss))
    monkeypatch.setattr(evaluate, "token_loss", recorder("val", token_loss))
    config = load_config(tiny_config(steps=2), ["train.label_smoothing=0.3"])
    train(config, tmp_path / "smoothed", progress=False)
    assert seen["train"] == [0.3, 0.3]
    assert seen["val"] and set(seen["val"]) == {0.0}


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_bad_values_are_refused(value):
    with pytest.raises(ConfigError, match="train.label_smoothing must be in"):
        config_from_dict({"train": {"label_smoothing": value}})
