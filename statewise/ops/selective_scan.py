"""The two sequence ops of a Mamba block: the selective scan and the short causal convolution.

Selective scan (Gu & Dao 2023), per channel d and state index n:

    h_t[d, n] = exp(dt_t[d] A[d, n]) h_{t-1}[d, n] + dt_t[d] B_t[n] x_t[d]
    y_t[d]    = sum_n C_t[n] h_t[d, n] + D[d] x_t[d]

with x, dt: (B, T, D), A: (D, N) (negative), B_t, C_t: (B, T, N), h: (B, D, N). It is a
diagonal linear recurrence with a = exp(dt A) and b = dt B x, run by
:func:`statewise.ops.scan.linear_recurrence` ("loop" or "scan"). With
``negative_eigenvalues`` the transition is 2 exp(dt A) - 1, in (-1, 1] instead of (0, 1]
(Grazzi et al. 2025); dt = 0 still gives the identity step, so masked steps (dt = 0)
carry the state through unchanged either way.

Memory: a, b and h have the shape (B, T, D, N), N times the size of the input. The scan
runs over time chunks of ``chunk_size`` steps (by default as many as fit a budget of
:data:`CHUNK_ELEMENTS` elements), so only one chunk's (B, L, D, N) tensors exist at a
time. Each chunk is an autograd Function (:class:`_SelectiveScanChunk`) that saves only its
inputs (x, dt: (B, L, D); B, C: (B, L, N); the entering state (B, D, N)) and rebuilds a, b
and h in the backward, as the CUDA kernel of the paper does: memory O(B L D N + (T / L) B D
N) instead of O(B T D N), for one more pass of the recurrence. Its backward is written out
(the reverse-time recurrence of the state gradient, then one product per input): 1.5x
faster than autograd through the forward's ops with activation checkpointing, measured.

Causal depthwise convolution (:func:`causal_conv1d`): out_t = bias + sum_j w[:, j] u_{t-K+1+j}
over the last K inputs per channel, where the K - 1 inputs before the sequence come from
the carried window (the state). With a mask, each real step convolves over the previous
K - 1 *real* inputs: masked steps are skipped as if absent, so a padded sequence gives
what it gives alone and the window carried out holds the last K - 1 real inputs.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from statewise import kernels
from statewise.ops.precision import float32_recurrence
from statewise.ops.scan import linear_recurrence, linear_recurrence_scan

MODES = ("loop", "scan")

# default chunk of the selective scan: about this many elements in one (B, L, D, N) tensor
# (1M floats = 4 MB in float32). Measured (1 thread, B8 D512 N16 T1024, fwd+bwd of the op):
# L = 8: 0.74 s, 16: 0.81 s, 32: 0.89 s, 64: 0.91 s, 128: 1.36 s, 256: 2.05 s.
CHUNK_ELEMENTS = 1 << 20


def _transitions(
    dt: torch.Tensor, A: torch.Tensor, negative_eigenvalues: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(exp(dt A), the transition a): a = exp(dt A), or 2 exp(dt A) - 1; (B, L, D, N)."""
    decay = torch.exp(dt.unsqueeze(-1) * A)
    return decay, (2.0 * decay - 1.0) if negative_eigenvalues else decay


def _reverse(a: torch.Tensor, g: torch.Tensor, form: str) -> torch.Tensor:
    """G_t = g_t + a_{t+1} G_{t+1} (G_{L-1} = g_{L-1}), the state gradient backwards in time.

    "loop" overwrites ``g`` with G one step at a time; "scan" runs the doubling scan on the
    time-reversed sequence, whose transition at reversed step s is a_{L-s}.
    """
    seq_len = g.shape[1]
    if form == "loop":
        for t in range(seq_len - 2, -1, -1):
            torch.addcmul(g[:, t], a[:, t + 1], g[:, t + 1], out=g[:, t])
        return g
    a_rev = a.flip(1)
    shifted = torch.cat([torch.zeros_like(a_rev[:, :1]), a_rev[:, :-1]], dim=1)
    return linear_recurrence_scan(shifted, g.flip(1)).flip(1)


class _SelectiveScanChunk(torch.autograd.Function):
    """One chunk of the selective scan, (x, dt, A, B, C, h0) -> (sum_n C_t h_t, h_L).

    Saves only the inputs. Backward, with a_t the transition and G_t the total gradient of
    h_t (from y_t through C_t, from h_{t+1} through a_{t+1}, and from the final state):

        G_t = gy_t C_t^T + a_{t+1} G_{t+1}          (a reverse-time linear recurrence)
        dL/dC_t[n]  = sum_d gy_t[d] h_t[d, n]        dL/dh0 = a_1 G_1
        dL/d(dt x)_t[d] = sum_n G_t[d, n] B_t[n]     dL/dB_t[n] = sum_d G_t[d, n] (dt x)_t[d]
        dL/d(dt A)_t[d, n] = G_t[d, n] h_{t-1}[d, n] da/d(dt A)  (= a, or 2 exp(dt A))

    and dt A gives dL/ddt_t[d] = sum_n (.) A[d, n], dL/dA[d, n] = sum_{b, t} (.) dt_t[d].
    """

    @staticmethod
    def forward(ctx, x, dt, A, B, C, h0, form, negative_eigenvalues):
        _, a = _transitions(dt, A, negative_eigenvalues)
        b = (dt * x).unsqueeze(-1) * B.unsqueeze(2)  # (B, L, D, N)
        h = linear_recurrence(a, b, h0, mode=form)
        y = (h @ C.unsqueeze(-1)).squeeze(-1)  # (B, L, D): a batched GEMV over n
        ctx.save_for_backward(x, dt, A, B, C, h0)
        ctx.form, ctx.negative = form, negative_eigenvalues
        return y, h[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_last):
        x, dt, A, B, C, h0 = ctx.saved_tensors
        decay, a = _transitions(dt, A, ctx.negative)
        dtx = dt * x
        h = linear_recurrence(a, dtx.unsqueeze(-1) * B.unsqueeze(2), h0, mode=ctx.form)
        grad_C = (grad_y.unsqueeze(-2) @ h).squeeze(-2)  # (B, L, N)
        g = grad_y.unsqueeze(-1) * C.unsqueeze(2)  # (B, L, D, N): from y_t
        if grad_last is not None:
            g[:, -1] += grad_last
        g = _reverse(a, g, ctx.form)  # G_t
        grad_h0 = a[:, 0] * g[:, 0]
        grad_dtx = (g @ B.unsqueeze(-1)).squeeze(-1)  # (B, L, D)
        grad_B = (dtx.unsqueeze(-2) @ g).squeeze(-2)  # (B, L, N)
        # G_t h_{t-1}, reusing h's memory: h_{t-1} for t >= 1, h0 for t = 0
        h[:, 1:] = h[:, :-1] * g[:, 1:]
        h[:, 0] = h0 * g[:, 0]
        grad_dA = h.mul_(decay)  # dL/d(dt A)
        if ctx.negative:
            grad_dA.mul_(2.0)
        grad_dt = (grad_dA * A).sum(dim=-1)  # sum_n (.) A[d, n]: (B, L, D)
        grad_A = (grad_dA * dt.unsqueeze(-1)).sum(dim=(0, 1))
        grad_dt = torch.addcmul(grad_dt, grad_dtx, x)
        return grad_dtx * dt, grad_dt, grad_A, grad_B, grad_C, grad_h0, None, None


class _SelectiveScanKernel(torch.autograd.Function):
    """The whole selective scan, (x, dt, A, B, C, h0) -> (sum_n C_t h_t, h_T), as the fused
    numba kernel of :mod:`statewise.kernels.selective_scan` (same equations as
    :class:`_SelectiveScanChunk`; it stores the state every 64 steps and recomputes between)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, h0, negative_eigenvalues):
        from statewise.kernels import selective_scan as kernel

        save = any(ctx.needs_input_grad)
        y, h, checkpoints = kernel.forward(x, dt, A, B, C, h0, negative_eigenvalues, save)
        ctx.save_for_backward(x, dt, A, B, C, checkpoints)
        ctx.negative = negative_eigenvalues
        return y, h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_last):
        from statewise.kernels import selective_scan as kernel

        x, dt, A, B, C, checkpoints = ctx.saved_tensors
        if grad_y is None:
            grad_y = torch.zeros_like(x)
        if grad_last is None:
            grad_last = x.new_zeros(x.shape[0], *A.shape)
        grads = kernel.backward(x, dt, A, B, C, checkpoints, grad_y, grad_last, ctx.negative)
        return *grads, None


def _kernel_ready(*tensors: torch.Tensor) -> bool:
    """True when the numba backend is in force and its selective scan takes these tensors."""
    if kernels.current() != "numba":
        return False
    from statewise.kernels import selective_scan as kernel

    return kernel.supported(*tensors)


@float32_recurrence
def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    mode: str = "loop",
    chunk_size: int | None = None,
    negative_eigenvalues: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba's selective scan; returns (y (B, T, D), final state h_T (B, D, N)).

    x, dt: (B, T, D) (dt already positive, e.g. softplus'd); A: (D, N); B, C: (B, T, N);
    D: (D,) or None (no skip term); h0: (B, D, N) or None (zeros). ``mode`` is the form of
    :func:`statewise.ops.scan.linear_recurrence`, "loop" or "scan", used for the forward
    and the backward recurrence. ``chunk_size``: time steps per chunk (None: as many as fit
    :data:`CHUNK_ELEMENTS`). Differentiable once (the backward is hand-written).

    With the numba backend (:mod:`statewise.kernels`), mode "loop" on CPU float32/float64
    tensors of one dtype runs the fused kernel of :mod:`statewise.kernels.selective_scan`
    instead (``chunk_size`` is then unused: the kernel never holds a (B, L, D, N) tensor).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if x.dim() != 3 or dt.shape != x.shape:
        raise ValueError(
            f"x and dt must both be (B, T, D), got {tuple(x.shape)} and {tuple(dt.shape)}"
        )
    batch, seq_len, width = x.shape
    if A.dim() != 2 or A.shape[0] != width:
        raise ValueError(f"A must be (D, N) with D = {width}, got {tuple(A.shape)}")
    n_state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (batch, seq_len, n_state):
            raise ValueError(
                f"{name} must be (B, T, N) = {(batch, seq_len, n_state)}, got {tuple(t.shape)}"
            )
    if h0 is None:
        h0 = x.new_zeros(batch, width, n_state)
    elif h0.shape != (batch, width, n_state):
        raise ValueError(f"h0 must be (B, D, N) = {(batch, width, n_state)}, got {tuple(h0.shape)}")
    if chunk_size is None:
        chunk_size = max(1, CHUNK_ELEMENTS // max(1, batch * width * n_state))
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if seq_len == 0:
        return x.new_zeros(x.shape), h0

    if mode == "loop" and _kernel_ready(x, dt, A, B, C, h0):
        y, h = _SelectiveScanKernel.apply(x, dt, A, B, C, h0, negative_eigenvalues)
        return (y if D is None else torch.addcmul(y, x, D)), h
    h, ys = h0, []
    for x_c, dt_c, b_c, c_c in zip(*(t.split(chunk_size, dim=1) for t in (x, dt, B, C))):
        y_c, h = _SelectiveScanChunk.apply(x_c, dt_c, A, b_c, c_c, h, mode, negative_eigenvalues)
        ys.append(y_c)
    y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=1)
    if D is not None:
        y = torch.addcmul(y, x, D)
    return y, h
