"""Seq2SeqModel: teacher forcing equals stepping, padding is per sequence, and beam search
finds the best sequence a brute-force enumeration finds."""

import itertools

import pytest
import torch

from statewise.errors import ArgumentError
from statewise.models.config import ModelConfig
from statewise.models.decoding import beam_search, greedy_decode
from statewise.models.seq2seq import Seq2SeqModel
from statewise.tasks.transduction import BOS, EOS


def _model(
    layer="lstm", attention="bahdanau", vocab=7, d_model=16, seed=0, bidirectional=False, **kw
):
    torch.manual_seed(seed)
    enc = ModelConfig(layer=layer, d_model=d_model, n_layers=1, vocab_size=vocab, mlp_ratio=0, **kw)
    dec = ModelConfig(layer=layer, d_model=d_model, n_layers=2, vocab_size=vocab, mlp_ratio=0, **kw)
    return Seq2SeqModel(enc, dec, attention, bidirectional).double().eval()


@pytest.mark.parametrize("layer", ["lstm", "mingru", "retnet", "lru"])
@pytest.mark.parametrize("attention", ["bahdanau", "luong", None])
def test_teacher_forcing_equals_stepping(layer, attention):
    model = _model(layer, attention)
    src = torch.randint(3, 7, (3, 6))
    tgt = torch.cat([torch.full((3, 1), BOS), torch.randint(3, 7, (3, 4))], 1)
    logits, weights = model(src, tgt)
    enc = model.encode(src)
    state = enc.state
    for t in range(tgt.shape[1]):
        logp, state, w = model.step(tgt[:, t], state, enc)
        torch.testing.assert_close(logp, logits[:, t].log_softmax(-1), rtol=1e-9, atol=1e-10)
        if attention is not None:
            torch.testing.assert_close(w, weights[:, t], rtol=1e-9, atol=1e-10)
    assert (weights is None) == (attention is None)


def test_the_source_reaches_the_decoder_through_the_bridge_without_attention():
    model = _model("lstm", None)
    tgt = torch.full((2, 1), BOS)
    logits, _ = model(torch.tensor([[3, 4, 5], [5, 4, 3]]), tgt)
    assert (logits[0] - logits[1]).abs().max() > 1e-6


@pytest.mark.parametrize("attention", ["bahdanau", None])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_padded_source_gives_what_it_gives_alone(attention, bidirectional):
    model = _model("gru", attention, bidirectional=bidirectional)
    long, short = torch.tensor([3, 4, 5, 6, 3]), torch.tensor([6, 5])
    src = torch.stack([long, torch.cat([short, torch.zeros(3, dtype=torch.long)])])
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    tgt = torch.tensor([[BOS, 3, 4], [BOS, 5, 6]])
    logits, weights = model(src, tgt, mask)
    alone, w_alone = model(short[None], tgt[1:])
    torch.testing.assert_close(logits[1:], alone, rtol=1e-9, atol=1e-10)
    if attention is not None:
        assert (weights[1, :, 2:] == 0).all()
        torch.testing.assert_close(weights[1:, :, :2], w_alone, rtol=1e-9, atol=1e-10)


def test_greedy_equals_beam_of_one():
    model = _model("mingru", "luong", seed=3)
    src = torch.randint(3, 7, (4, 5))
    assert greedy_decode(model, src, max_len=6)[0] == beam_search(model, src, beam=1, max_len=6)[0]


def _brute_force_best(model, src, length_penalty, max_len=3):
    """The best of every sequence ended by EOS within max_len tokens and every open one of
    max_len tokens, scored as beam_search scores them (log-probabilities from one teacher-
    forced forward over all candidates: the decoder is causal, so right padding is inert)."""
    others = [t for t in range(model.output.out_features) if t != EOS]
    candidates = [
        list(s) + [EOS] for n in range(max_len) for s in itertools.product(others, repeat=n)
    ]
    candidates += [list(s) for s in itertools.product(others, repeat=max_len)]
    target = torch.tensor([c + [0] * (max_len - len(c)) for c in candidates])
    target_in = torch.cat([torch.full((len(candidates), 1), BOS), target[:, :-1]], 1)
    logits, _ = model(src.expand(len(candidates), -1), target_in)
    logp = logits.log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    real = torch.tensor([[t < len(c) for t in range(max_len)] for c in candidates])
    lengths = real.sum(1)
    scores = (logp * real).sum(1) / lengths.double() ** length_penalty
    best = candidates[int(scores.argmax())]
    return best[:-1] if best[-1] == EOS else best


def test_a_wide_beam_finds_the_brute_force_best():
    """vocab 5 (EOS and 4 others), max_len 3: a beam of 125 keeps every hypothesis, so it
    must return the best of all ended and open sequences under the same score. EOS's logit
    is raised by 0.5 so that ended sequences of several lengths compete (seed 3 with length
    penalty 1 picks one of 2 tokens, seed 1 an open one, the others the empty one)."""
    differ = 0
    for seed in range(4):
        model = _model("lstm", "bahdanau", vocab=5, seed=seed)
        with torch.no_grad():
            model.output.bias[EOS] += 0.5
        src = torch.tensor([3, 4, 3])
        found = {}
        for penalty in (0.0, 1.0):
            got, align = beam_search(model, src[None], beam=125, max_len=3, length_penalty=penalty)
            assert got == [_brute_force_best(model, src, penalty)], (seed, penalty)
            assert align[0].shape[1] == 3
            found[penalty] = got
        differ += found[0.0] != found[1.0]
    assert differ  # the length penalty changed the answer somewhere: both scores are tested


def test_beam_results_do_not_depend_on_the_batch():
    model = _model("lstm", "bahdanau", seed=2)
    src = torch.randint(3, 7, (3, 4))
    together = beam_search(model, src, beam=3, max_len=5)[0]
    alone = [beam_search(model, src[i : i + 1], beam=3, max_len=5)[0][0] for i in range(3)]
    assert together == alone


def test_clear_errors():
    with pytest.raises(ArgumentError, match="attention"):
        _model(attention="dot")
    model = _model()
    with pytest.raises(ArgumentError, match="source_mask"):
        model.encode(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ArgumentError, match="beam"):
        beam_search(model, torch.zeros(1, 3, dtype=torch.long), beam=0)
    with pytest.raises(ArgumentError, match="length_penalty must be finite"):
        beam_search(model, torch.zeros(1, 3, dtype=torch.long), length_penalty=float("nan"))


def test_a_bidirectional_encoder_reads_the_whole_source():
    """The summary (the decoder's initial state) sees the last characters either way; the
    first position's memory sees later characters only when bidirectional."""
    for bidirectional in (False, True):
        model = _model("mingru", "luong", bidirectional=bidirectional)
        a, b = torch.tensor([[3, 4, 5, 6]]), torch.tensor([[3, 6, 5, 4]])
        first = [model.encode(src).memory[0, 0] for src in (a, b)]
        assert bool((first[0] - first[1]).abs().max() > 1e-9) == bidirectional
