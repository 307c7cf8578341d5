"""Newton-parallel solution of a nonlinear recurrence (DEER, Lim et al. 2024; ParaRNN,
Danieli et al. 2025; quasi-DEER, Gonzalez et al. 2024).

    h_t = f(h_{t-1}, u_t),   t = 1..T,   h_0 given

is one system of T equations in (h_1, ..., h_T). Newton's method linearises every step around
the current trajectory h^k at once (J_t = df/dh at (h^k_{t-1}, u_t), all t in parallel):

    h^{k+1}_t = J_t h^{k+1}_{t-1} + [f(h^k_{t-1}, u_t) - J_t h^k_{t-1}]

which is a LINEAR recurrence in h^{k+1}: with a diagonal J it is
:func:`statewise.ops.scan.linear_recurrence` (a = J, b = the bracket). Each iteration makes
at least one more step exact (step 1 is exact from the start, since h_0 is known), so in
exact arithmetic Newton reaches the sequential answer in at most T iterations; near the
solution it converges quadratically, usually in a handful.

Structure of the Jacobian (``block``):
- ``block=1``: df_i/dh_j = 0 for i != j over the whole state (B, *S): J has the state's shape.
- ``block=k``: the state is (B, *S, k) and only the k components of the last axis of one
  unit are coupled (e.g. an LSTM's (c, h)): J is (B, T, *S, k, k), J[..., i, j] = df_i/dh_j,
  and the linear recurrence h_t = J_t h_{t-1} + b_t is a small matrix-vector product per
  unit, solved by a loop over time (:func:`_block_recurrence`).
J comes from ``jacobian(h_prev, *xs, *params) -> (f, J)`` when the cell has it written out,
else from forward-mode autodiff (one jvp per block column, ``torch.autograd.forward_ad``).

Stopping: a fixed number of ``iterations`` (ParaRNN uses 3; the result is then only as
good as 3 iterations make it), or ``tol``: stop when max |h^{k+1} - h^k| <= tol, after at most
``max_iterations``. Damping: ``jacobian_clip`` clips J to [-clip, clip] (block: every
entry), a quasi-Newton step whose linearised recurrence cannot blow up; the fixed point is
the same and the at-most-T-iterations argument still holds, only the quadratic convergence
is lost where the clip bites. Fallback: when an iterate is not finite, or ``tol`` is not met
within ``max_iterations``, the answer is computed by the sequential loop instead.

Backward (implicit function theorem, one linear solve at the solution, no unrolling of the
iterations): with g_t = dL/dh_t from outside and J_t taken at the solution, the adjoint

    lam_T = g_T,    lam_t = g_t + J_{t+1}^T lam_{t+1}

is the same linear recurrence run backwards in time with transposed Jacobians; then one
vector-Jacobian product of F(h_prev, u) = f(h_{t-1}, u_t) (all t at once) with lam gives
dL/du, dL/dparams and dL/dh_0 (the h_prev[0] part).

Masks (B, T), True = real step: where a step is masked, f is the identity (J = I,
residual 0), so the state passes through unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.autograd.function import once_differentiable

from statewise.ops.precision import float32_recurrence
from statewise.ops.scan import linear_recurrence

Cell = Callable[..., Tensor]  # f(h_prev, *xs, *params) -> h
CellJacobian = Callable[..., tuple[Tensor, Tensor]]  # (h_prev, *xs, *params) -> (f, J)

#: the tolerance when neither ``iterations`` nor ``tol`` is given, by dtype
DEFAULT_TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
#: at most this many iterations (or T, if smaller) before falling back to the loop
DEFAULT_MAX_ITERATIONS = 32


class NewtonReport(NamedTuple):
    """How a solve went: linear solves done, last max |h^{k+1} - h^k|, whether it fell back."""

    iterations: int
    change: float
    fallback: bool


class NewtonOptions(NamedTuple):
    """Validated solver options (see :func:`newton_options`)."""

    iterations: int | None
    tol: float | None
    max_iterations: int | None
    jacobian_clip: float | None
    block: int


def newton_options(
    iterations: int | None = None,
    tol: float | None = None,
    max_iterations: int | None = None,
    jacobian_clip: float | None = None,
    block: int = 1,
) -> NewtonOptions:
    """Check the solver options; ValueError naming the bad one.

    Give ``iterations`` (a fixed count) or ``tol`` (with an optional ``max_iterations``),
    not both; with neither, ``tol`` is DEFAULT_TOL for the dtype at solve time.
    """

    def _positive_int(name: str, v: object) -> None:
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise ValueError(f"{name} must be a positive int or None, got {v!r}")

    def _positive_float(name: str, v: object) -> None:
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf
        ):
            raise ValueError(f"{name} must be a positive finite number or None, got {v!r}")

    _positive_int("iterations", iterations)
    _positive_int("max_iterations", max_iterations)
    _positive_float("tol", tol)
    _positive_float("jacobian_clip", jacobian_clip)
    if isinstance(block, bool) or not isinstance(block, int) or block <= 0:
        raise ValueError(f"block must be a positive int, got {block!r}")
    if iterations is not None and (tol is not None or max_iterations is not None):
        raise ValueError(
            "give either iterations (a fixed count) or tol/max_iterations (stop on "
            f"convergence), not both; got iterations={iterations}, tol={tol}, "
            f"max_iterations={max_iterations}"
        )
    return NewtonOptions(
        iterations,
        None if tol is None else float(tol),
        max_iterations,
        None if jacobian_clip is None else float(jacobian_clip),
        block,
    )


# ------------------------------------------------------------------- helpers


def _shift(h: Tensor, h0: Tensor) -> Tensor:
    """h_prev: (h_0, h_1, ..., h_{T-1}) from h = (h_1, ..., h_T)."""
    return torch.cat([h0.unsqueeze(1), h[:, :-1]], dim=1)


def _expand_mask(mask: Tensor, like: Tensor) -> Tensor:
    return mask.reshape(mask.shape + (1,) * (like.dim() - 2))


def _masked(f: Cell, mask: Tensor | None) -> Cell:
    """f, with the identity at masked steps (mask (B, T) for (B, T, ...) tensors)."""
    if mask is None:
        return f

    def masked_f(h_prev: Tensor, *args: Tensor) -> Tensor:
        return torch.where(_expand_mask(mask, h_prev), f(h_prev, *args), h_prev)

    return masked_f


def jvp_jacobian(f: Cell, block: int) -> CellJacobian:
    """(f, J) by forward-mode autodiff: one jvp per column of the (block x block) blocks."""

    def jvp(h_prev: Tensor, tangent: Tensor, args: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        with fwAD.dual_level():
            value, column = fwAD.unpack_dual(f(fwAD.make_dual(h_prev, tangent), *args))
        return value, column

    def jacobian(h_prev: Tensor, *args: Tensor) -> tuple[Tensor, Tensor]:
        if block == 1:
            return jvp(h_prev, torch.ones_like(h_prev), args)
        columns = []
        for j in range(block):
            tangent = torch.zeros_like(h_prev)
            tangent[..., j] = 1
            value, column = jvp(h_prev, tangent, args)
            columns.append(column)
        return value, torch.stack(columns, dim=-1)

    return jacobian


def _masked_jacobian(jacobian: CellJacobian, mask: Tensor | None, block: int) -> CellJacobian:
    if mask is None:
        return jacobian

    def masked(h_prev: Tensor, *args: Tensor) -> tuple[Tensor, Tensor]:
        value, jac = jacobian(h_prev, *args)
        keep = _expand_mask(mask, h_prev)
        value = torch.where(keep, value, h_prev)
        if block == 1:
            return value, torch.where(keep, jac, torch.ones_like(jac))
        eye = torch.eye(block, dtype=jac.dtype, device=jac.device)
        return value, torch.where(keep.unsqueeze(-1), jac, eye)

    return masked


def _matvec(jac: Tensor, h: Tensor, block: int) -> Tensor:
    return jac * h if block == 1 else (jac * h.unsqueeze(-2)).sum(-1)


def _block_recurrence(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """h_t = a_t h_{t-1} + b_t with a (B, T, ..., k, k) small matrices, b (B, T, ..., k)."""
    out = torch.empty_like(b)
    h = h0
    for t in range(b.shape[1]):
        h = (a[:, t] * h.unsqueeze(-2)).sum(-1) + b[:, t]
        out[:, t] = h
    return out


def _linear_solve(jac: Tensor, b: Tensor, h0: Tensor, block: int) -> Tensor:
    """h_t = J_t h_{t-1} + b_t, diagonal (linear_recurrence) or block by block."""
    if block == 1:
        return linear_recurrence(jac, b, h0)
    return _block_recurrence(jac, b, h0)


def _adjoint(jac: Tensor, grad: Tensor, block: int) -> Tensor:
    """lam_t = g_t + J_{t+1}^T lam_{t+1}, lam_T = g_T: the linear recurrence in reverse time."""
    if block > 1:
        jac = jac.transpose(-1, -2)
    a_next = torch.cat([jac[:, 1:], torch.zeros_like(jac[:, :1])], dim=1)
    lam = _linear_solve(a_next.flip(1), grad.flip(1), torch.zeros_like(grad[:, 0]), block)
    return lam.flip(1)


# ------------------------------------------------------------------- solvers


@float32_recurrence
def sequential_recurrence(
    f: Cell,
    h0: Tensor,
    xs: Sequence[Tensor],
    params: Sequence[Tensor] = (),
    mask: Tensor | None = None,
) -> Tensor:
    """h_t = f(h_{t-1}, xs[:, t], params) by a loop over time; returns all h_t (B, T, ...).

    xs: tensors (B, T, ...) read one step at a time; params: tensors passed whole to every
    step. Differentiable by plain autograd (the reference form and the fallback).
    """
    if xs[0].shape[1] == 0:
        return h0.new_empty(h0.shape[:1] + (0,) + h0.shape[1:])
    # unbind, not x[:, t]: the backward of T selects would write T full-size zero tensors
    per_step = zip(*(x.unbind(1) for x in xs))
    keeps = mask.unbind(1) if mask is not None else None
    steps: list[Tensor] = []
    h = h0
    for t, x_t in enumerate(per_step):
        new = f(h, *x_t, *params)
        if keeps is not None:
            new = torch.where(keeps[t].reshape((-1,) + (1,) * (h.dim() - 1)), new, h)
        h = new
        steps.append(h)
    return torch.stack(steps, dim=1)


def newton_solve(
    f: Cell,
    h0: Tensor,
    xs: Sequence[Tensor],
    params: Sequence[Tensor] = (),
    mask: Tensor | None = None,
    jacobian: CellJacobian | None = None,
    options: NewtonOptions | None = None,
) -> tuple[Tensor, NewtonReport]:
    """Solve h_t = f(h_{t-1}, u_t) for all t by Newton's method (no autograd graph).

    f(h_prev, *xs, *params) -> h acts on whole sequences: h_prev (B, T, *S), xs (B, T, ...),
    params broadcast over (B, T). Returns (h (B, T, *S), report). Initial guess: f with a
    zero state at every step but the first, which sees h_0 (ParaRNN's f(0, x_t)).
    """
    options = options if options is not None else newton_options()
    block = options.block
    seq_len = xs[0].shape[1]
    with torch.no_grad():
        if seq_len == 0:
            return sequential_recurrence(f, h0, xs, params), NewtonReport(0, 0.0, False)
        args = (*xs, *params)
        f_m = _masked(f, mask)
        jac_m = _masked_jacobian(jacobian or jvp_jacobian(f, block), mask, block)
        tol = options.tol
        max_iter = options.iterations or options.max_iterations
        if options.iterations is None:
            tol = tol if tol is not None else DEFAULT_TOL.get(h0.dtype, 1e-2)
            max_iter = max_iter or min(seq_len, DEFAULT_MAX_ITERATIONS)

        h_prev = h0.new_zeros(h0.shape[:1] + (seq_len,) + h0.shape[1:])
        h_prev[:, 0] = h0
        h = f_m(h_prev, *args)
        change = math.inf
        for k in range(1, max_iter + 1):
            h_prev = _shift(h, h0)
            value, jac = jac_m(h_prev, *args)
            if options.jacobian_clip is not None:
                jac = jac.clamp(-options.jacobian_clip, options.jacobian_clip)
            h_new = _linear_solve(jac, value - _matvec(jac, h_prev, block), h0, block)
            change = (h_new - h).abs().max().item()
            h = h_new
            if not math.isfinite(change):
                break
            if tol is not None and change <= tol:
                return h, NewtonReport(k, change, False)
        if tol is None and math.isfinite(change):
            return h, NewtonReport(max_iter, change, False)
        return sequential_recurrence(f, h0, xs, params, mask), NewtonReport(k, change, True)


class _ImplicitGradient(torch.autograd.Function):
    """Attaches to a solution h of h_t = f(h_{t-1}, u_t) the gradient of the implicit
    function theorem: one adjoint solve at h (module docstring), whatever found h."""

    @staticmethod
    def forward(ctx, f, jacobian, block, mask, n_xs, h, h0, *tensors):
        ctx.f, ctx.jacobian, ctx.block, ctx.mask = f, jacobian, block, mask
        ctx.save_for_backward(h0, h, *tensors)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h):
        h0, h, *tensors = ctx.saved_tensors
        block, mask = ctx.block, ctx.mask
        f_m = _masked(ctx.f, mask)
        jac_m = _masked_jacobian(ctx.jacobian or jvp_jacobian(ctx.f, block), mask, block)
        h_prev = _shift(h, h0)
        _, jac = jac_m(h_prev, *tensors)
        lam = _adjoint(jac, grad_h, block)
        wanted = [ctx.needs_input_grad[6], *ctx.needs_input_grad[7:]]
        with torch.enable_grad():
            h_prev = h_prev.detach().requires_grad_(wanted[0])
            inputs = [t.detach().requires_grad_(w) for t, w in zip(tensors, wanted[1:])]
            out = f_m(h_prev, *inputs)
            targets = [t for t, w in zip([h_prev, *inputs], wanted) if w]
            grads = iter(torch.autograd.grad(out, targets, lam, allow_unused=True))
        result = [next(grads) if w else None for w in wanted]
        if result[0] is not None:
            result[0] = result[0][:, 0]
        return None, None, None, None, None, None, *result


@float32_recurrence
def newton_recurrence(
    f: Cell,
    h0: Tensor,
    xs: Sequence[Tensor],
    params: Sequence[Tensor] = (),
    mask: Tensor | None = None,
    jacobian: CellJacobian | None = None,
    options: NewtonOptions | None = None,
) -> Tensor:
    """h_t = f(h_{t-1}, u_t) for t = 1..T by Newton (see the module docstring); all h_t.

    Differentiable in h0, xs and params; the backward is one reverse-time linear solve with
    the Jacobians at the solution plus one vector-Jacobian product of f, whatever the number
    of forward iterations. ``options`` from :func:`newton_options` (default: tol by dtype).
    """
    options = options if options is not None else newton_options()
    if options.block > 1 and h0.shape[-1] != options.block:
        raise ValueError(
            f"block={options.block} needs a state whose last axis has that size, got h0 "
            f"{tuple(h0.shape)}"
        )
    if xs[0].shape[1] == 0:
        return sequential_recurrence(f, h0, xs, params, mask)
    h, _ = newton_solve(f, h0, xs, params, mask, jacobian, options)
    return _ImplicitGradient.apply(f, jacobian, options.block, mask, len(xs), h, h0, *xs, *params)
