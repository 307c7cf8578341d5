"""statewise.ops.crf: the linear-chain CRF against brute-force enumeration of all L^T tag
paths (partition function, likelihood, Viterbi path), padding against each row alone, and
gradcheck in float64."""

from __future__ import annotations

import itertools

import pytest
import torch

from statewise.errors import ArgumentError, ArgumentTypeError, NonFiniteError
from statewise.ops.crf import (
    CRF,
    crf_log_partition,
    crf_nll,
    crf_score,
    crf_viterbi,
)

F64 = dict(rtol=1e-12, atol=1e-12)


def path_score(emissions, transitions, start, end, path) -> torch.Tensor:
    """score(y) of one row's path, term by term from the definition (float64 scalars)."""
    score = start[path[0]] + end[path[-1]]
    for t, tag in enumerate(path):
        score = score + emissions[t, tag]
        if t > 0:
            score = score + transitions[path[t - 1], tag]
    return score


def enumerate_paths(emissions, transitions, start, end):
    """Every path of one row (T, L) with its score, by brute force over L^T paths."""
    length, n_tags = emissions.shape
    paths = list(itertools.product(range(n_tags), repeat=length))
    scores = torch.stack([path_score(emissions, transitions, start, end, p) for p in paths])
    return paths, scores


def crf_problem(batch, seq_len, n_tags, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    lengths = torch.randint(1, seq_len + 1, (batch,), generator=g)
    lengths[0] = seq_len
    mask = torch.arange(seq_len) < lengths[:, None]
    tags = torch.randint(0, n_tags, (batch, seq_len), generator=g).masked_fill(~mask, -7)
    return (
        draw(batch, seq_len, n_tags),
        draw(n_tags, n_tags),
        draw(n_tags),
        draw(n_tags),
        tags,
        mask,
    )


SHAPES = [(1, 1), (1, 4), (3, 2), (4, 3), (5, 3), (4, 4)]  # (T, L), T <= 5, L <= 4


@pytest.mark.parametrize("seq_len, n_tags", SHAPES)
def test_partition_likelihood_and_viterbi_equal_enumeration(seq_len, n_tags):
    emissions, transitions, start, end, tags, mask = crf_problem(4, seq_len, n_tags, seed=seq_len)
    log_z = crf_log_partition(emissions, transitions, start, end, mask)
    nll = crf_nll(emissions, tags, transitions, start, end, mask, reduction="none")
    score = crf_score(emissions, tags, transitions, start, end, mask)
    best = crf_viterbi(emissions, transitions, start, end, mask)
    for b, n in enumerate(mask.sum(1).tolist()):
        paths, scores = enumerate_paths(emissions[b, :n], transitions, start, end)
        gold = path_score(emissions[b, :n], transitions, start, end, tags[b, :n].tolist())
        torch.testing.assert_close(log_z[b], torch.logsumexp(scores, 0), **F64)
        torch.testing.assert_close(score[b], gold, **F64)
        torch.testing.assert_close(nll[b], torch.logsumexp(scores, 0) - gold, **F64)
        assert best.as_lists()[b] == list(paths[int(scores.argmax())])
        torch.testing.assert_close(best.scores[b], scores.max(), **F64)
        assert best.tags[b, n:].eq(-1).all()


def test_probabilities_of_all_paths_sum_to_one():
    emissions, transitions, start, end, _, _ = crf_problem(1, 4, 3, seed=1)
    paths = torch.tensor(list(itertools.product(range(3), repeat=4)))
    nll = crf_nll(
        emissions.expand(len(paths), -1, -1), paths, transitions, start, end, None, "none"
    )
    torch.testing.assert_close(torch.exp(-nll).sum(), torch.tensor(1.0, dtype=torch.float64))


def test_padded_rows_equal_each_row_alone():
    emissions, transitions, start, end, tags, mask = crf_problem(5, 6, 4, seed=7)
    params = (transitions, start, end)
    log_z = crf_log_partition(emissions, *params, mask)
    nll = crf_nll(emissions, tags, *params, mask, reduction="none")
    best = crf_viterbi(emissions, *params, mask)
    leaf = emissions.clone().requires_grad_()
    crf_nll(leaf, tags, *params, mask, reduction="sum").backward()
    for b, n in enumerate(mask.sum(1).tolist()):
        alone = emissions[b : b + 1, :n].clone().requires_grad_()
        torch.testing.assert_close(log_z[b], crf_log_partition(alone, *params)[0], **F64)
        row_nll = crf_nll(alone, tags[b : b + 1, :n], *params, reduction="none")
        torch.testing.assert_close(nll[b], row_nll[0], **F64)
        row_best = crf_viterbi(alone, *params)
        assert best.as_lists()[b] == row_best.as_lists()[0]
        torch.testing.assert_close(best.scores[b], row_best.scores[0], **F64)
        row_nll.sum().backward()
        torch.testing.assert_close(leaf.grad[b, :n], alone.grad[0], **F64)
        assert not leaf.grad[b, n:].any()


def test_gradcheck():
    emissions, transitions, start, end, tags, mask = crf_problem(3, 4, 3, seed=3)
    inputs = tuple(t.clone().requires_grad_() for t in (emissions, transitions, start, end))

    def nll(e, a, s, f):
        return crf_nll(e, tags, a, s, f, mask, reduction="none")

    def log_z(e, a, s, f):
        return crf_log_partition(e, a, s, f, mask)

    assert torch.autograd.gradcheck(nll, inputs, eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(log_z, inputs, eps=1e-6, atol=1e-7)


def test_gradient_of_log_partition_is_the_tag_marginals():
    """d log Z / d e_t(j) = P(y_t = j | x): against marginals summed over all paths."""
    emissions, transitions, start, end, _, _ = crf_problem(1, 4, 3, seed=5)
    leaf = emissions.clone().requires_grad_()
    crf_log_partition(leaf, transitions, start, end).sum().backward()
    paths, scores = enumerate_paths(emissions[0], transitions, start, end)
    probabilities = torch.softmax(scores, 0)
    marginals = torch.zeros(4, 3, dtype=torch.float64)
    for path, p in zip(paths, probabilities):
        marginals[range(4), list(path)] += p
    torch.testing.assert_close(leaf.grad[0], marginals, **F64)


def test_module_holds_the_parameters_and_starts_as_a_softmax():
    crf = CRF(3).double()
    assert [n for n, _ in crf.named_parameters()] == ["transitions", "start", "end"]
    emissions, _, _, _, tags, mask = crf_problem(4, 5, 3, seed=2)
    # zero transitions: -log P(y) is the sum over real tokens of per-token softmax NLLs
    per_token = -emissions.log_softmax(-1).gather(2, tags.clamp(min=0).unsqueeze(2)).squeeze(2)
    expected = (per_token * mask).sum(1)
    torch.testing.assert_close(crf(emissions, tags, mask, reduction="none"), expected, **F64)
    torch.testing.assert_close(crf(emissions, tags, mask), expected.mean(), **F64)
    torch.testing.assert_close(crf(emissions, tags, mask, reduction="sum"), expected.sum(), **F64)
    assert crf.decode(emissions, mask).as_lists() == [
        row[:n] for row, n in zip(emissions.argmax(-1).tolist(), mask.sum(1).tolist())
    ]
    (crf(emissions, tags, mask) + crf.log_partition(emissions, mask).sum()).backward()
    assert crf.transitions.grad.abs().sum() > 0


def test_float32_agrees_with_float64_and_autocast_runs_in_float32():
    emissions, transitions, start, end, tags, mask = crf_problem(3, 50, 5, seed=4)
    expected = crf_nll(emissions, tags, transitions, start, end, mask, reduction="none")
    params32 = [t.float() for t in (transitions, start, end)]
    got = crf_nll(emissions.float(), tags, *params32, mask, reduction="none")
    # 50 steps of logsumexp in float32 over NLLs of ~60-110: measured 2e-7 relative
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = crf_nll(emissions.float(), tags, *params32, mask, reduction="none")
        best = crf_viterbi(emissions.float(), *params32, mask)
    assert under.dtype == torch.float32 and best.scores.dtype == torch.float32
    torch.testing.assert_close(under, got, rtol=0, atol=0)


@pytest.mark.parametrize(
    "change, error, words",
    [
        (dict(emissions=torch.zeros(2, 3)), ArgumentError, "emissions"),
        (dict(emissions=[[0.0]]), ArgumentTypeError, "emissions"),
        (dict(emissions=torch.full((2, 3, 2), float("inf"))), NonFiniteError, "emissions"),
        (dict(transitions=torch.zeros(3, 3)), ArgumentError, "transitions"),
        (dict(start=torch.zeros(2, dtype=torch.long)), ArgumentTypeError, "start"),
        (dict(end=torch.tensor([0.0, float("nan")])), NonFiniteError, "end"),
        (dict(mask=torch.ones(2, 3)), ArgumentTypeError, "mask"),
        (dict(mask=torch.tensor([[1, 1, 1], [0, 1, 1]]).bool()), ArgumentError, "right padding"),
        (dict(mask=torch.tensor([[1, 1, 1], [0, 0, 0]]).bool()), ArgumentError, "real token"),
        (dict(mask=torch.ones(2, 4, dtype=torch.bool)), ArgumentError, "mask"),
        (dict(tags=torch.tensor([[0, 1, 2], [0, 1, 0]])), ArgumentError, "tags"),
        (dict(tags=torch.zeros(2, 3)), ArgumentTypeError, "tags"),
        (dict(reduction="batchmean"), ArgumentError, "reduction"),
    ],
)
def test_bad_input_raises_clear_errors(change, error, words):
    args = dict(
        emissions=torch.randn(2, 3, 2),
        tags=torch.tensor([[0, 1, 1], [1, 0, -1]]),
        transitions=torch.zeros(2, 2),
        start=torch.zeros(2),
        end=torch.zeros(2),
        mask=torch.tensor([[True, True, True], [True, True, False]]),
        reduction="mean",
    )
    args.update(change)
    with pytest.raises(error, match=words):
        crf_nll(**args)


def test_inputs_are_not_modified():
    problem = crf_problem(3, 4, 3, seed=9)
    copies = [t.clone() for t in problem]
    emissions, transitions, start, end, tags, mask = problem
    crf_nll(emissions, tags, transitions, start, end, mask)
    crf_viterbi(emissions, transitions, start, end, mask)
    for given, copy in zip(problem, copies):
        assert torch.equal(given, copy)
