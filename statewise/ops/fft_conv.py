"""Long causal convolution by FFT, and a diagonal LTI state space model run as one.

A linear time-invariant (LTI) diagonal state space model per channel h and mode n,

    x_t = a_n x_{t-1} + b_n u_t,        y_t = Re(sum_n c_n x_{t,n}),        x_{-1} = x0,

with a fixed complex (or real) a_n = exp(log_a_n), unrolls into

    y_t = sum_{s <= t} K_{t-s} u_s  +  Re(sum_n c_n a_n^{t+1} x0_n),   K_l = Re(sum_n c_n b_n a_n^l)
    x_T = a^T x0 + b sum_s a^{T-1-s} u_s        (the final state after T steps)

- :func:`causal_conv`: y_t = sum_{s<=t} k_{t-s} u_s over the last axis, by a real FFT of a
  5-smooth length >= 2T - 1 (so nothing wraps around); O(T log T) per channel. It has a
  hand-written backward (one rfft and two irfft from the saved spectra; autograd's
  generic FFT backward was measured 4x the forward here). float64 goes through the
  complex FFT instead (see :func:`_spectrum`: torch's float64 rfft cost ~20 ms a call).
- :func:`real_vandermonde`: Re(sum_n coef_n z_n^l) for l = 0..L-1 (the kernel, and the
  response to the initial state), computed in blocks l = qC + r as
  Re((coef z^{qC}) @ z^r): one batched GEMM over channels, memory O(N (L/C + C)) instead
  of an O(N L) table of powers, and every power is exp(l log z) (never a repeated product).
- :func:`powers_sum`: sum_s u_s z^{T-1-s} (the input's share of the final state), the same
  blocked GEMM transposed.
- :func:`lti_conv`: the whole model: kernel, FFT convolution, the initial state's response
  and the final state, so a sequence run in pieces (passing the state) equals it run whole.

Every power z^k is built from real exp, cos and sin (:func:`cexp`): torch's complex exp on
CPU is not vectorised and was measured 100x slower than that here.

Masks: a masked step must leave the state unchanged, which a convolution cannot do in
place (a would still decay the state). :func:`lti_conv` therefore compacts each row: its
real tokens are moved, in order, to the end of the row (a stable sort of the mask) and the
front gets zero input; the initial state's response is shifted to start at the first real
token (exponent t - start + 1), the final state decays by a^{n_real} instead of a^T, and
the outputs are put back in place. This is exact for any mask (right or left padding, or
holes), costs a sort and a few gathers, and needs no recurrent fallback. Outputs at masked
positions are finite but meaningless.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from statewise.ops.precision import float32_recurrence

BLOCK = 64  # block length C of the Vandermonde GEMMs (measured: within 10% of the best of 16-256)


def fft_size(n: int) -> int:
    """The smallest 5-smooth number (2^a 3^b 5^c) >= n: a length the FFT handles fast."""
    best = 1 << max(0, (n - 1).bit_length())  # the next power of two always qualifies
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _spectrum(x: torch.Tensor, n: int) -> torch.Tensor:
    """The DFT of real x zero-padded to n: the half spectrum (rfft), except in float64.

    In float64 torch's CPU rfft/irfft (MKL) took about 20 ms per call here whatever the size
    (the complex-to-complex transform takes microseconds), so float64 uses the full complex
    spectrum instead; the products and sums on spectra are the same in both layouts.
    """
    if x.dtype == torch.float64:
        return torch.fft.fft(x.to(torch.complex128), n=n)
    return torch.fft.rfft(x, n=n)


def _signal(spectrum: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """The first ``length`` samples of the real signal with this :func:`_spectrum`."""
    if spectrum.dtype == torch.complex128:
        return torch.fft.ifft(spectrum, n=n).real[..., :length]
    return torch.fft.irfft(spectrum, n=n)[..., :length]


class _CausalConv(torch.autograd.Function):
    """y = IDFT(DFT(u) DFT(k))[:T]; the backward from the saved spectra:
    dL/du = IDFT(G conj(K))[:T], dL/dk = IDFT(sum over broadcast dims of G conj(U))[:T],
    G = DFT(dL/dy). (Correlations; the zero padding to n >= 2T - 1 keeps them exact.)"""

    @staticmethod
    def forward(ctx, u: torch.Tensor, k: torch.Tensor, n: int) -> torch.Tensor:
        u_f, k_f = _spectrum(u, n), _spectrum(k, n)
        ctx.save_for_backward(u_f, k_f)
        ctx.shapes = (u.shape, k.shape)
        ctx.n = n
        return _signal(u_f * k_f, n, u.shape[-1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        u_f, k_f = ctx.saved_tensors
        u_shape, k_shape = ctx.shapes
        n, seq_len = ctx.n, grad_y.shape[-1]
        g_f = _spectrum(grad_y, n)
        grad_u = grad_k = None
        if ctx.needs_input_grad[0]:
            grad_u = _sum_leading(_signal(g_f * k_f.conj(), n, seq_len), tuple(u_shape[:-1]))
        if ctx.needs_input_grad[1]:
            spectrum = _sum_leading(g_f * u_f.conj(), tuple(k_shape[:-1]))
            grad_k = _signal(spectrum, n, seq_len)
        return grad_u, grad_k, None


def _sum_leading(x: torch.Tensor, lead: tuple[int, ...]) -> torch.Tensor:
    """Sum x (..., L) over its broadcast dims down to the leading shape ``lead`` (+ L)."""
    target = (*lead, x.shape[-1])
    return x if tuple(x.shape) == target else x.sum_to_size(target)


def causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """y_t = sum_{s <= t} k_{t-s} u_s over the last axis, by FFT.

    u: (..., T) real; k: (..., T) real, broadcastable against u (e.g. (H, T) against
    (B, H, T)). Returns y with the broadcast shape, (..., T). Differentiable once (the
    backward is hand-written, see :class:`_CausalConv`).
    """
    seq_len = u.shape[-1]
    if k.shape[-1] != seq_len:
        raise ValueError(f"k must have length {seq_len} along its last axis, got {k.shape[-1]}")
    if seq_len == 0:
        return u.new_zeros(torch.broadcast_shapes(u.shape, k.shape))
    return _CausalConv.apply(u, k, fft_size(2 * seq_len - 1))


def cexp(z: torch.Tensor) -> torch.Tensor:
    """exp of a complex tensor, from real exp, cos and sin (see the module docstring)."""
    magnitude = torch.exp(z.real)
    return torch.complex(magnitude * torch.cos(z.imag), magnitude * torch.sin(z.imag))


def _powers(log_z: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of z^k = exp(k log_z), log_z (H, N), steps (K,): (H, K, N)."""
    k_re = log_z.real.unsqueeze(-2) * steps.unsqueeze(-1)
    k_im = log_z.imag.unsqueeze(-2) * steps.unsqueeze(-1)
    magnitude = torch.exp(k_re)
    return magnitude * torch.cos(k_im), magnitude * torch.sin(k_im)


def _blocks(length: int, log_z: torch.Tensor) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """Block length C, block count Q (Q C >= length) and the steps 0..C-1 and 0, C, .., (Q-1)C."""
    c_len = min(BLOCK, length)
    q_len = -(-length // c_len)
    steps = torch.arange(max(c_len, q_len), device=log_z.device, dtype=log_z.real.dtype)
    return c_len, q_len, steps[:c_len], steps[:q_len] * c_len


def real_vandermonde(coef: torch.Tensor, log_z: torch.Tensor, length: int) -> torch.Tensor:
    """Re(sum_n coef_n z_n^l) for l = 0 .. length-1, with z = exp(log_z).

    coef: (H, M, N) complex (M rows per channel, e.g. M = 1 for a kernel, M = B for the
    response of B initial states); log_z: (H, N) complex. Returns (H, M, length) real.

    Blocked: l = qC + r, so the sum is Re((coef z^{qC}) @ z^r) over n: per channel one
    (M Q x 2N) by (2N x C) real GEMM, the real and imaginary parts stacked along the inner
    axis (Re(a b) = a.re b.re - a.im b.im).
    """
    heads, rows, n = coef.shape
    c_len, q_len, inner_steps, outer_steps = _blocks(length, log_z)
    outer_re, outer_im = _powers(log_z, outer_steps)  # (H, Q, N)
    outer_re, outer_im = outer_re.unsqueeze(1), outer_im.unsqueeze(1)  # (H, 1, Q, N)
    coef_re = coef.real.contiguous().unsqueeze(2)  # (H, M, 1, N)
    coef_im = coef.imag.contiguous().unsqueeze(2)
    left = torch.cat(  # (H, M, Q, 2N): [Re(coef z^qC), -Im(coef z^qC)]
        [coef_re * outer_re - coef_im * outer_im, -(coef_re * outer_im + coef_im * outer_re)],
        dim=-1,
    )
    inner_re, inner_im = _powers(log_z, inner_steps)  # (H, C, N)
    inner = torch.cat([inner_re, inner_im], dim=-1).transpose(1, 2)  # (H, 2N, C)
    out = torch.bmm(left.view(heads, rows * q_len, 2 * n), inner)  # (H, M Q, C)
    return out.view(heads, rows, q_len * c_len)[..., :length]


def powers_sum(u: torch.Tensor, log_z: torch.Tensor) -> torch.Tensor:
    """sum_s u_s z_n^{T-1-s} over the last axis of u: the input's share of the final state.

    u: (B, H, T) real; log_z: (H, N) complex. Returns (B, H, N) complex.

    With l = T-1-s = qC + r: sum_q z^{qC} (sum_r u_rev[qC + r] z^r), the inner sums one real
    GEMM per channel, (B Q x C) by (C x 2N), for the real and imaginary parts together.
    """
    batch, heads, seq_len = u.shape
    n = log_z.shape[-1]
    c_len, q_len, inner_steps, outer_steps = _blocks(seq_len, log_z)
    u_rev = F.pad(u.flip(-1), (0, q_len * c_len - seq_len))  # (B, H, Q C)
    u_rev = u_rev.transpose(0, 1).reshape(heads, batch * q_len, c_len)  # (H, B Q, C)
    inner_re, inner_im = _powers(log_z, inner_steps)  # (H, C, N)
    part = torch.bmm(u_rev, torch.cat([inner_re, inner_im], dim=-1))  # (H, B Q, 2N)
    part = part.view(heads, batch, q_len, 2 * n)
    part_re, part_im = part[..., :n], part[..., n:]
    outer_re, outer_im = _powers(log_z, outer_steps)  # (H, Q, N)
    outer_re, outer_im = outer_re.unsqueeze(1), outer_im.unsqueeze(1)  # (H, 1, Q, N)
    out_re = (part_re * outer_re - part_im * outer_im).sum(dim=2)  # (H, B, N)
    out_im = (part_re * outer_im + part_im * outer_re).sum(dim=2)
    return torch.complex(out_re, out_im).transpose(0, 1)


def compaction(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a mask (B, T): the order that puts each row's real tokens last (in order), the
    inverse of that order, and the number of real tokens per row."""
    order = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)
    inverse = torch.argsort(order, dim=1)
    return order, inverse, mask.sum(dim=1)


def gather_time(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, H, T) gathered along time by index (B, T), the same for every channel."""
    return x.gather(-1, index.unsqueeze(1).expand(-1, x.shape[1], -1))


def initial_state_response(
    c: torch.Tensor, log_a: torch.Tensor, x0: torch.Tensor, length: int
) -> torch.Tensor:
    """Re(sum_n c_n a_n^{j} x0_n) for j = 0 .. length-1: (B, H, length) real.

    c, log_a: (H, N) complex; x0: (B, H, N) complex. Step t of the model sees j = t + 1.
    """
    coef = (c * x0).transpose(0, 1)  # (H, B, N)
    return real_vandermonde(coef, log_a, length).transpose(0, 1)


@float32_recurrence
def lti_conv(
    u: torch.Tensor,
    log_a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    x0: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run x_t = a x_{t-1} + b u_t, y_t = Re(sum_n c_n x_{t,n}) by FFT convolution.

    u: (B, H, T) real input (time last); log_a, b, c: (H, N) complex with a = exp(log_a);
    x0: (B, H, N) complex state before the first step; mask: (B, T) bool or None (True =
    real token; masked steps leave the state unchanged, see the module docstring).
    Returns y (B, H, T) real and the final state x_T (B, H, N) complex.

    When x0 is all zeros and needs no gradient (a fresh state) its response is skipped
    (it is exactly zero).
    """
    batch, _, seq_len = u.shape
    if seq_len == 0:
        return u.new_zeros(u.shape), x0
    if mask is not None:
        order, inverse, n_real = compaction(mask)
        start = seq_len - n_real  # first real position in the compacted row
        real = torch.arange(seq_len, device=u.device) >= start.unsqueeze(1)
        u = gather_time(u, order) * real.unsqueeze(1).to(u.dtype)
    kernel = real_vandermonde((c * b).unsqueeze(1), log_a, seq_len).squeeze(1)  # (H, T)
    y = causal_conv(u, kernel)
    fresh = not x0.requires_grad and not bool(x0.any())
    if not fresh:
        if mask is None:  # step t sees a^{t+1} x0
            y = y + initial_state_response(c * cexp(log_a), log_a, x0, seq_len)
        else:  # the state is x0 until the first real token at `start`: shift the response
            response = initial_state_response(c, log_a, x0, seq_len + 1)
            shift = (torch.arange(1, seq_len + 1, device=u.device) - start.unsqueeze(1)).clamp(
                min=0
            )
            y = y + gather_time(response, shift)
    final = b * powers_sum(u, log_a)
    if not fresh:
        steps = seq_len if mask is None else n_real.to(u.dtype).view(batch, 1, 1)
        final = final + cexp(log_a * steps) * x0
    if mask is not None:
        y = gather_time(y, inverse)
    return y, final
