"""statewise.ops.transducer: the RNN transducer loss against brute-force enumeration of
every alignment, its hand-written gradient against autograd through that enumeration and
finite differences, and the numba kernel against the pure-PyTorch twin."""

from __future__ import annotations

import itertools

import pytest
import torch

from statewise import kernels
from statewise.errors import ArgumentError, ArgumentTypeError, NonFiniteError
from statewise.ops.transducer import transducer_loss

BACKENDS = kernels.available()
F64 = dict(rtol=1e-12, atol=1e-12)


def enumerated_log_likelihood(
    logp: torch.Tensor, labels: list[int], frames: int, blank: int
) -> torch.Tensor:
    """log P(y|x) of one row, logp (T', U'+1, V), summed over every alignment: an
    alignment is the T + U - 1 moves before the final blank at (T-1, U), U of them labels
    (any choice of positions) and the rest blanks; differentiable by autograd."""
    n_labels = len(labels)
    scores = []
    for label_moves in itertools.combinations(range(frames + n_labels - 1), n_labels):
        t = u = 0
        score = logp.new_zeros(())
        for move in range(frames + n_labels - 1):
            if move in label_moves:
                score = score + logp[t, u, labels[u]]
                u += 1
            else:
                score = score + logp[t, u, blank]
                t += 1
        scores.append(score + logp[frames - 1, n_labels, blank])
    return torch.logsumexp(torch.stack(scores), 0)


def lattice(batch, frames, n_labels, vocab, seed, dtype=torch.float64, blank=0):
    """Random joiner log-probabilities (B, T, U+1, V), non-blank labels (B, U) whose padding
    holds -1 (so that reading it would fail), and per-row lengths covering the extremes."""
    g = torch.Generator().manual_seed(seed)
    logp = torch.randn(batch, frames, n_labels + 1, vocab, generator=g, dtype=dtype)
    logp = logp.log_softmax(-1)
    labels = torch.randint(0, vocab - 1, (batch, n_labels), generator=g)
    labels = labels + (labels >= blank).long()  # skip the blank
    lengths = torch.randint(1, frames + 1, (batch,), generator=g)
    label_lengths = torch.randint(0, n_labels + 1, (batch,), generator=g)
    lengths[0], label_lengths[0] = frames, n_labels  # one row fills the padded lattice
    padding = torch.arange(n_labels) >= label_lengths[:, None]
    return logp, labels.masked_fill(padding, -1), lengths, label_lengths


def reference_losses(logp, labels, lengths, label_lengths, blank=0) -> torch.Tensor:
    return torch.stack(
        [
            -enumerated_log_likelihood(logp[b], labels[b, :n].tolist(), int(t), blank)
            for b, (t, n) in enumerate(zip(lengths, label_lengths.tolist()))
        ]
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "frames, n_labels, vocab, blank",
    [(1, 0, 2, 0), (1, 3, 4, 0), (4, 0, 3, 0), (3, 2, 3, 2), (4, 3, 4, 0), (4, 3, 4, 1)],
)
def test_loss_equals_enumeration_of_all_alignments(backend, frames, n_labels, vocab, blank):
    args = lattice(5, frames, n_labels, vocab, seed=frames * 10 + n_labels, blank=blank)
    expected = reference_losses(*args, blank=blank)
    with kernels.use(backend):
        losses = transducer_loss(*args, blank=blank, reduction="none")
    torch.testing.assert_close(losses, expected, **F64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_equals_autograd_through_enumeration(backend):
    logp, labels, lengths, label_lengths = lattice(4, 4, 3, 4, seed=11)
    weights = torch.tensor([0.5, -1.0, 2.0, 1.5], dtype=torch.float64)  # per-row upstream
    leaf = logp.clone().requires_grad_()
    (reference_losses(leaf, labels, lengths, label_lengths) * weights).sum().backward()
    ours = logp.clone().requires_grad_()
    with kernels.use(backend):
        losses = transducer_loss(ours, labels, lengths, label_lengths, reduction="none")
    (losses * weights).sum().backward()
    torch.testing.assert_close(ours.grad, leaf.grad, **F64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    logp, labels, lengths, label_lengths = lattice(3, 3, 2, 3, seed=5)
    logp.requires_grad_()
    with kernels.use(backend):
        for reduction in ("mean", "none"):
            assert torch.autograd.gradcheck(
                lambda x, r=reduction: transducer_loss(x, labels, lengths, label_lengths, 0, r),
                (logp,),
                eps=1e-6,
                atol=1e-6,
            )


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_kernel_equals_twin(dtype, tol):
    """Both forms run the same recursion in the input's dtype; they differ only in the
    order of rounding (float32: a few ulps of values up to ~40)."""
    if "numba" not in BACKENDS:
        pytest.skip("numba is not installed")
    logp, labels, lengths, label_lengths = lattice(6, 13, 7, 9, seed=3, dtype=dtype)
    results = []
    for backend in ("torch", "numba"):
        leaf = logp.clone().requires_grad_()
        with kernels.use(backend):
            losses = transducer_loss(leaf, labels, lengths, label_lengths, reduction="none")
        losses.sum().backward()
        results.append((losses, leaf.grad))
    (twin, twin_grad), (kernel, kernel_grad) = results
    torch.testing.assert_close(kernel, twin, rtol=tol, atol=tol)
    torch.testing.assert_close(kernel_grad, twin_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_padded_rows_equal_each_row_alone(backend):
    """Each row cut to its own lattice gives the loss and gradient it gets in the padded
    batch; the padding gets zero gradient. The kernel computes a row alike whatever else
    is in the batch (equal to the last bit); the twin's vectorised exp/log may round the
    same value differently in another position of a wider tensor."""
    logp, labels, lengths, label_lengths = lattice(5, 6, 4, 5, seed=8)
    leaf = logp.clone().requires_grad_()
    with kernels.use(backend):
        batched = transducer_loss(leaf, labels, lengths, label_lengths, reduction="none")
        batched.sum().backward()
        for b, (t, n) in enumerate(zip(lengths.tolist(), label_lengths.tolist())):
            alone = logp[b : b + 1, :t, : n + 1].clone().requires_grad_()
            loss = transducer_loss(
                alone, labels[b : b + 1, :n], lengths[b : b + 1], label_lengths[b : b + 1]
            )
            loss.backward()
            if backend == "numba":
                assert torch.equal(loss, batched[b])
            torch.testing.assert_close(loss, batched[b], **F64)
            torch.testing.assert_close(leaf.grad[b, :t, : n + 1], alone.grad[0], **F64)
            outside = leaf.grad[b].clone()
            outside[:t, : n + 1] = 0
            assert not outside.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_labels_is_blank_at_every_frame(backend):
    """U = 0: the only alignment emits blank at each frame, -log P = -sum_t blank(t, 0),
    and its gradient is -1 at those entries, 0 elsewhere."""
    logp, labels, lengths, label_lengths = lattice(3, 5, 0, 4, seed=2, blank=2)
    leaf = logp.clone().requires_grad_()
    with kernels.use(backend):
        losses = transducer_loss(leaf, labels, lengths, label_lengths, blank=2, reduction="none")
    losses.sum().backward()
    frames = torch.arange(5) < lengths[:, None]
    torch.testing.assert_close(losses, -(logp[:, :, 0, 2] * frames).sum(1), **F64)
    expected = torch.zeros_like(logp)
    expected[:, :, 0, 2] = -frames.double()
    torch.testing.assert_close(leaf.grad, expected, **F64)


def test_reductions():
    args = lattice(4, 3, 2, 3, seed=9)
    per_row = transducer_loss(*args, reduction="none")
    assert per_row.shape == (4,)
    torch.testing.assert_close(transducer_loss(*args), per_row.mean(), **F64)
    torch.testing.assert_close(transducer_loss(*args, reduction="sum"), per_row.sum(), **F64)


def test_bfloat16_autocast_runs_in_float32():
    logp, labels, lengths, label_lengths = lattice(2, 3, 2, 3, seed=4, dtype=torch.float32)
    expected = transducer_loss(logp, labels, lengths, label_lengths, reduction="none")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = transducer_loss(logp, labels, lengths, label_lengths, reduction="none")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def _bad(logp, labels, lengths, label_lengths, change):
    args = dict(logp=logp, labels=labels, lengths=lengths, label_lengths=label_lengths)
    args.update(change)
    return args


@pytest.mark.parametrize(
    "change, error, words",
    [
        (dict(logp=torch.zeros(2, 3, 3)), ArgumentError, "logp"),
        (dict(logp="x"), ArgumentTypeError, "logp"),
        (dict(logp=torch.full((2, 3, 3, 4), float("nan"))), NonFiniteError, "logp"),
        (dict(labels=torch.ones(2, 2)), ArgumentTypeError, "labels"),
        (dict(labels=torch.ones(2, 3, dtype=torch.long)), ArgumentError, "labels"),
        (dict(labels=torch.tensor([[1, 0], [1, 2]])), ArgumentError, "blank"),
        (dict(labels=torch.tensor([[1, 4], [1, 2]])), ArgumentError, "labels"),
        (dict(lengths=torch.tensor([0, 3])), ArgumentError, "lengths"),
        (dict(lengths=torch.tensor([4, 3])), ArgumentError, "lengths"),
        (dict(lengths=torch.tensor([3])), ArgumentError, "lengths"),
        (dict(label_lengths=torch.tensor([3, 1])), ArgumentError, "label_lengths"),
        (dict(label_lengths=torch.tensor([True, False])), ArgumentTypeError, "label_lengths"),
        (dict(blank=4), ArgumentError, "blank"),
        (dict(blank=True), ArgumentTypeError, "blank"),
        (dict(reduction="avg"), ArgumentError, "reduction"),
    ],
)
def test_bad_input_raises_clear_errors(change, error, words):
    logp = torch.randn(2, 3, 3, 4).log_softmax(-1)
    labels = torch.tensor([[1, 2], [3, -1]])
    lengths, label_lengths = torch.tensor([3, 2]), torch.tensor([2, 1])
    with pytest.raises(error, match=words):
        transducer_loss(**_bad(logp, labels, lengths, label_lengths, change))


def test_inputs_are_not_modified():
    args = lattice(3, 4, 3, 4, seed=6)
    copies = [a.clone() for a in args]
    leaf = args[0].requires_grad_()
    transducer_loss(leaf, *args[1:]).backward()
    for given, copy in zip(args, copies):
        assert torch.equal(given.detach(), copy)
