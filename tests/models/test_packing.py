"""A packed batch of documents trains on what each document alone would give: the
per-document losses of a language model over packed rows with ``resets`` equal the losses of
each document run alone, for every registered layer (each layer's modes are covered by the
contract harness's test_packed_documents_equal_each_alone)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import statewise.layers as L
from statewise.models import ModelConfig, build_model

DOCS = ((0, 4), (4, 9), (13, 3))  # (start, length) of the documents packed into row 0
WIDTH = 16


@pytest.mark.parametrize("name", L.names())
def test_packed_losses_equal_each_document_alone(name):
    torch.manual_seed(0)
    config = ModelConfig(layer=name, d_model=16, n_layers=2, vocab_size=32)
    model = build_model(config).double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # off the init, some of which (rwkv's zero outputs) hides history
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    ids = torch.randint(0, 32, (2, WIDTH + 1), generator=g)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    resets = torch.zeros(2, WIDTH, dtype=torch.bool)
    for start, _ in DOCS[1:]:
        resets[0, start] = True
    with torch.no_grad():
        logits = model(inputs, resets=resets)
        packed = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        for start, n in DOCS:
            part = slice(start, start + n)
            alone = model(inputs[:1, part])
            expected = F.cross_entropy(alone.transpose(1, 2), targets[:1, part], reduction="none")
            torch.testing.assert_close(packed[:1, part], expected, rtol=1e-9, atol=1e-10)
        # row 1 has no resets: it is the plain forward
        torch.testing.assert_close(logits[1:], model(inputs[1:]), rtol=1e-9, atol=1e-10)
        # and a packed row is not what the same tokens give unpacked (the test can fail)
        assert not torch.allclose(logits[:1, 4:], model(inputs[:1])[:, 4:])


@pytest.mark.parametrize(
    "resets, error",
    [
        (torch.zeros(2, 5, dtype=torch.long), TypeError),  # not bool
        (torch.zeros(2, 4, dtype=torch.bool), ValueError),  # wrong length
        ([[True] * 5] * 2, TypeError),  # not a tensor
    ],
)
def test_bad_resets_name_the_argument(resets, error):
    layer = L.get("mingru", d_model=8)
    with pytest.raises(error, match="resets"):
        layer(torch.randn(2, 5, 8), resets=resets)
