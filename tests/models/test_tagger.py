"""The tagger model: its CRF loss and Viterbi decoding against brute-force enumeration of
all tag paths, its softmax loss against a per-token loop, and padding per sequence."""

from __future__ import annotations

import pytest
import torch

from statewise.models.config import ModelConfig
from statewise.models.tagger import PADDING_TAG, TaggerModel
from tests.ops.test_crf import enumerate_paths

VOCAB, L, D = 6, 3, 8
F64 = dict(rtol=1e-9, atol=1e-10)


def tagger(crf: bool, bidirectional: bool = True, seed: int = 0) -> TaggerModel:
    torch.manual_seed(seed)
    config = ModelConfig(
        layer="gru",
        d_model=D,
        n_layers=1,
        vocab_size=VOCAB,
        head="classifier",
        n_classes=L,
        mlp_ratio=0,
    )
    model = TaggerModel(config, bidirectional, crf).double().eval()
    if crf:  # transitions away from zero, so that the CRF differs from a softmax
        with torch.no_grad():
            for p in model.crf.parameters():
                p.copy_(torch.randn(p.shape, dtype=torch.float64))
    return model


def problem(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (3, 4), generator=g)
    tags = torch.randint(0, L, (3, 4), generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    return ids, tags, mask


def test_crf_loss_is_the_enumerated_negative_log_likelihood_per_token():
    model = tagger(crf=True)
    ids, tags, mask = problem()
    emissions = model(ids, mask)
    params = [p.detach() for p in (model.crf.transitions, model.crf.start, model.crf.end)]
    total = torch.zeros((), dtype=torch.float64)
    for b, n in enumerate(mask.sum(1).tolist()):
        paths, scores = enumerate_paths(emissions[b, :n].detach(), *params)
        gold = scores[paths.index(tuple(tags[b, :n].tolist()))]
        total = total + scores.logsumexp(0) - gold
    torch.testing.assert_close(model.loss(ids, tags, mask), total / mask.sum(), **F64)


def test_softmax_loss_is_the_mean_cross_entropy_of_the_real_tokens():
    model = tagger(crf=False)
    ids, tags, mask = problem()
    logp = model(ids, mask).log_softmax(-1)
    terms = [-logp[b, t, tags[b, t]] for b in range(3) for t in range(4) if mask[b, t]]
    torch.testing.assert_close(model.loss(ids, tags, mask), torch.stack(terms).mean(), **F64)


@pytest.mark.parametrize("crf", [True, False])
def test_decoding_gives_the_best_path_and_minus_one_at_padding(crf):
    model = tagger(crf)
    ids, _, mask = problem()
    emissions = model(ids, mask).detach()
    decoded = model.decode(ids, mask)
    assert (decoded[~mask] == PADDING_TAG).all()
    for b, n in enumerate(mask.sum(1).tolist()):
        if crf:
            params = [p.detach() for p in (model.crf.transitions, model.crf.start, model.crf.end)]
            paths, scores = enumerate_paths(emissions[b, :n], *params)
            best = list(paths[int(scores.argmax())])
        else:
            best = emissions[b, :n].argmax(-1).tolist()
        assert decoded[b, :n].tolist() == best


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("crf", [True, False])
def test_a_padded_batch_decodes_and_scores_each_row_as_alone(crf, bidirectional):
    model = tagger(crf, bidirectional)
    ids, tags, mask = problem(seed=2)
    padded = ids.masked_fill(~mask, VOCAB - 1)  # what padding holds must not matter
    decoded = model.decode(padded, mask)
    for b, n in enumerate(mask.sum(1).tolist()):
        alone = model.decode(ids[b : b + 1, :n])
        assert decoded[b, :n].tolist() == alone[0].tolist()
    together = model(padded, mask)
    for b, n in enumerate(mask.sum(1).tolist()):
        torch.testing.assert_close(together[b, :n], model(ids[b : b + 1, :n])[0], **F64)
