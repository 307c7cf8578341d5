"""The RNN transducer loss (Graves 2012, "Sequence Transduction with Recurrent Neural
Networks"): -log P(y|x) summed over every alignment of the labels y to the frames x.

The joiner gives log-probabilities logp (B, T, U+1, V) over V symbols (blank included) at
each lattice cell (t, u): frame t, u labels emitted so far. From (t, u) a path either emits
blank and moves to frame t+1, or emits label y_{u+1} and stays on frame t. For row b with
T_b frames and U_b labels, blank(t, u) = logp[b, t, u, blank], y(t, u) = logp[b, t, u,
labels[b, u]] (the label that takes u to u+1):

    alpha(0, 0) = 0
    alpha(t, u) = logaddexp(alpha(t-1, u) + blank(t-1, u), alpha(t, u-1) + y(t, u-1))
    log P(y|x)  = alpha(T_b-1, U_b) + blank(T_b-1, U_b)

The last blank is written as one more move, into an exit cell (T_b, U_b): then
log P = alpha(T_b, U_b). The backward variables run the same recursion from the exit:

    beta(T_b, U_b) = 0
    beta(t, u) = logaddexp(beta(t+1, u) + blank(t, u), beta(t, u+1) + y(t, u)),
    beta(0, 0) = log P

and the gradient of the loss L = -log P is minus each move's posterior probability:

    dL/dlogp[t, u, blank]    = -exp(alpha(t, u) + blank(t, u) + beta(t+1, u) - log P)
    dL/dlogp[t, u, y_{u+1}]  = -exp(alpha(t, u) + y(t, u) + beta(t, u+1) - log P)

and zero for every other symbol. A row's moves stay in its own lattice: a blank needs
t < T_b, a label t < T_b and u < U_b. A blank from the last frame at u < U_b enters an exit
cell (T_b, u) from which nothing leads on (beta = -inf there), so it adds nothing to P and
gets no gradient: only paths ending with the blank from (T_b-1, U_b) count.

The gradient goes into ``logp``; pass ``logp = log_softmax(joiner logits)`` and autograd
carries it on to the logits (Graves's eq. 16 is this chain rule done by hand). The backward
is hand-written (:class:`_TransducerLoss`, once differentiable), so no autograd graph over
the (T, U) lattice is built.

Two equal forms, chosen by :func:`statewise.kernels.current`:

- the twin (pure PyTorch): one vectorised step per anti-diagonal t + u = n of the lattice
  (every cell of a diagonal depends only on the diagonal before it), so T + U small steps,
  each over all cells of the diagonal and all rows; a shorter row's lattice is cut out of
  the padded one by its own exit cell and -inf label moves outside it (see ``_moves``).
  The diagonals win over a loop over t with an inner loop over u, which needs T * U
  steps, or a cumulative logsumexp over u, which subtracts large partial sums;
- the numba kernel (:mod:`statewise.kernels.transducer`): a scalar loop over each row's own
  cells, rows in parallel.

``reduction="mean"`` averages the per-sequence losses over the batch (as torchaudio's
``rnnt_loss``; torch's CTCLoss instead divides each by its target length first).
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from statewise import kernels
from statewise.errors import ArgumentError
from statewise.ops.checks import (
    REDUCTIONS,
    check_blank,
    check_int_tensor,
    check_log_probs,
)
from statewise.ops.precision import float32_recurrence


def _check_labels(
    labels: object, label_lengths: torch.Tensor, batch: int, positions: int, vocab: int, blank: int
) -> torch.Tensor:
    """labels (B, U) int64, its real entries (before label_lengths) in [0, V) and not blank;
    entries after label_lengths may hold anything (they are padding)."""
    labels = check_int_tensor("labels", labels, (batch, positions - 1), label_lengths.device)
    real = torch.arange(positions - 1, device=labels.device) < label_lengths[:, None]
    used = labels[real]
    if used.numel() and (int(used.min()) < 0 or int(used.max()) >= vocab):
        raise ArgumentError(f"labels must be in [0, {vocab}) (the symbols of logp)")
    if bool((used == blank).any()):
        raise ArgumentError(f"labels contain the blank index {blank}; labels are non-blank")
    return torch.where(real, labels, 0)


# ------------------------------------------------------------------- the twin


def _moves(
    logp: torch.Tensor,
    labels: torch.Tensor,
    lengths: torch.Tensor,
    label_lengths: torch.Tensor,
    blank: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(blank moves, label moves, label index (B, T, U+1, 1)). The moves are the
    log-probabilities of the blank and the label from each cell (t, u) at [t+1, u+1] of a
    (B, T+2, U+2) tensor whose border (t = -1, t = T, u = -1, u = U+1) is -inf, so every
    neighbour can be indexed. Label moves outside the row's own lattice (t >= T_b or
    u >= U_b) are -inf; blanks need no mask: a path that passes the row's exit by a blank
    can never reach it again (beta = -inf there), so it adds to neither P nor the gradient."""
    batch, frames, positions, _ = logp.shape
    t = torch.arange(frames, device=logp.device)[None, :, None]
    u = torch.arange(positions, device=logp.device)[None, None, :]
    last_t, last_u = lengths[:, None, None] - 1, label_lengths[:, None, None]
    index = torch.cat([labels, labels.new_zeros(batch, 1)], dim=1)
    index = index[:, None, :, None].expand(batch, frames, positions, 1)
    blank_moves = logp[..., blank]  # a blank past the exit leads nowhere: no mask needed
    label_moves = (
        logp.gather(3, index).squeeze(3).masked_fill((t > last_t) | (u >= last_u), -math.inf)
    )
    border = (1, 1, 1, 1)
    return (
        torch.nn.functional.pad(blank_moves, border, value=-math.inf),
        torch.nn.functional.pad(label_moves, border, value=-math.inf),
        index,
    )


def _diagonal(n: int, frames: int, positions: int, device: torch.device):
    """The cells (t, u) with t + u = n, 0 <= t <= frames, 0 <= u < positions."""
    t = torch.arange(max(0, n - positions + 1), min(frames, n) + 1, device=device)
    return t, n - t


def _twin_forward(blank_moves: torch.Tensor, label_moves: torch.Tensor) -> torch.Tensor:
    """alpha of every cell, t = 0..T (T: the exit row), at [t+1, u+1] of a (B, T+2, U+2)
    tensor with a -inf border (moves laid out as :func:`_moves` gives them)."""
    frames, positions = blank_moves.shape[1] - 2, blank_moves.shape[2] - 2
    alpha = torch.full_like(blank_moves, -math.inf)
    alpha[:, 1, 1] = 0.0
    for n in range(1, frames + positions):
        t, u = _diagonal(n, frames, positions, alpha.device)
        by_blank = alpha[:, t, u + 1] + blank_moves[:, t, u + 1]  # from (t-1, u)
        by_label = alpha[:, t + 1, u] + label_moves[:, t + 1, u]  # from (t, u-1)
        alpha[:, t + 1, u + 1] = torch.logaddexp(by_blank, by_label)
    return alpha


def _twin_backward(
    blank_moves: torch.Tensor,
    label_moves: torch.Tensor,
    alpha: torch.Tensor,
    log_likelihood: torch.Tensor,
    lengths: torch.Tensor,
    label_lengths: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(posterior of each blank move, of each label move), (B, T, U+1), from alpha and beta
    (all in the layout of :func:`_moves`)."""
    batch = blank_moves.shape[0]
    frames, positions = blank_moves.shape[1] - 2, blank_moves.shape[2] - 2
    beta = torch.full_like(alpha, -math.inf)
    exit_cells = (torch.arange(batch, device=alpha.device), lengths + 1, label_lengths + 1)
    beta[exit_cells] = 0.0
    exit_beta = beta.clone()  # a cell's own exit term, 0 at the exit and -inf elsewhere
    for n in range(frames + positions - 2, -1, -1):
        t, u = _diagonal(n, frames - 1, positions, alpha.device)  # t < T: rows with moves
        by_blank = beta[:, t + 2, u + 1] + blank_moves[:, t + 1, u + 1]  # to (t+1, u)
        by_label = beta[:, t + 1, u + 2] + label_moves[:, t + 1, u + 1]  # to (t, u+1)
        recursion = torch.logaddexp(by_blank, by_label)
        beta[:, t + 1, u + 1] = torch.logaddexp(recursion, exit_beta[:, t + 1, u + 1])
    cells = (slice(None), slice(1, frames + 1), slice(1, positions + 1))  # t < T
    a = alpha[cells] - log_likelihood[:, None, None]
    blank_post = torch.exp(a + blank_moves[cells] + beta[:, 2 : frames + 2, 1 : positions + 1])
    label_post = torch.exp(a + label_moves[cells] + beta[:, 1 : frames + 1, 2 : positions + 2])
    return blank_post, label_post


# ---------------------------------------------------------------- the function


class _TransducerLoss(torch.autograd.Function):
    """Per-sequence losses -log P(y|x) (B,) with the hand-written backward of the module
    docstring; the twin or the numba kernel, as chosen at the call."""

    @staticmethod
    def forward(ctx, logp, labels, lengths, label_lengths, blank, use_kernel):
        if use_kernel:
            from statewise.kernels import transducer as kernel

            log_likelihood, alpha = kernel.forward(logp, labels, lengths, label_lengths, blank)
        else:
            blank_moves, label_moves, _ = _moves(logp, labels, lengths, label_lengths, blank)
            alpha = _twin_forward(blank_moves, label_moves)
            rows = torch.arange(logp.shape[0], device=logp.device)
            log_likelihood = alpha[rows, lengths + 1, label_lengths + 1]
        ctx.save_for_backward(logp, labels, lengths, label_lengths, alpha, log_likelihood)
        ctx.blank, ctx.use_kernel = blank, use_kernel
        return -log_likelihood

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        logp, labels, lengths, label_lengths, alpha, log_likelihood = ctx.saved_tensors
        if ctx.use_kernel:
            from statewise.kernels import transducer as kernel

            args = (logp, labels, lengths, label_lengths, ctx.blank, alpha, log_likelihood)
            return kernel.backward(*args, grad_loss), None, None, None, None, None
        blank_moves, label_moves, index = _moves(logp, labels, lengths, label_lengths, ctx.blank)
        blank_post, label_post = _twin_backward(
            blank_moves, label_moves, alpha, log_likelihood, lengths, label_lengths
        )
        scale = -grad_loss.to(logp.dtype)[:, None, None]
        grad = torch.zeros_like(logp)
        grad[..., ctx.blank] = scale * blank_post
        grad.scatter_add_(3, index, (scale * label_post).unsqueeze(3))
        return grad, None, None, None, None, None


def _use_kernel(logp: torch.Tensor) -> bool:
    if kernels.current() != "numba":
        return False
    from statewise.kernels import transducer as kernel

    return kernel.supported(logp)


@float32_recurrence
def transducer_loss(
    logp: torch.Tensor,
    labels: torch.Tensor,
    lengths: torch.Tensor,
    label_lengths: torch.Tensor,
    blank: int = 0,
    reduction: str = "mean",
) -> torch.Tensor:
    """The RNN transducer loss -log P(labels | frames) (see the module docstring).

    logp: (B, T, U+1, V) joiner log-probabilities (log_softmax over V), finite.
    labels: (B, U) integer, non-blank symbols; entries at and after label_lengths are
    padding (ignored). lengths: (B,) frames per row, 1..T. label_lengths: (B,) labels per
    row, 0..U. blank: the blank symbol's index. reduction: "mean" (over the batch), "sum"
    or "none" (the (B,) per-sequence losses). Differentiable w.r.t. logp (once).
    """
    logp = check_log_probs("logp", logp, 4, "(batch, frames, labels + 1, symbols)")
    batch, frames, positions, vocab = logp.shape
    blank = check_blank(blank, vocab)
    if reduction not in REDUCTIONS:
        raise ArgumentError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    device = logp.device
    lengths = check_int_tensor("lengths", lengths, (batch,), device, 1, frames)
    label_lengths = check_int_tensor(
        "label_lengths", label_lengths, (batch,), device, 0, positions - 1
    )
    labels = _check_labels(labels, label_lengths, batch, positions, vocab, blank)
    args = (labels, lengths, label_lengths, blank, _use_kernel(logp))
    losses = _TransducerLoss.apply(logp.contiguous(), *args)
    if reduction == "mean":
        return losses.mean()
    return losses.sum() if reduction == "sum" else losses
