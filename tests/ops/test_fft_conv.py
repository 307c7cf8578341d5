"""statewise.ops.fft_conv: FFT convolution and the LTI SSM in conv form against float64 loops."""

from __future__ import annotations

import pytest
import torch

from statewise.ops.fft_conv import (
    BLOCK,
    causal_conv,
    cexp,
    fft_size,
    initial_state_response,
    lti_conv,
    powers_sum,
    real_vandermonde,
)

F64 = dict(rtol=1e-10, atol=1e-11)
B, H, N = 3, 4, 5


def direct_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """y_t = sum_{s <= t} k_{t-s} u_s, one output at a time."""
    u, k = torch.broadcast_tensors(u, k)
    out = torch.zeros_like(u)
    for t in range(u.shape[-1]):
        for s in range(t + 1):
            out[..., t] = out[..., t] + k[..., t - s] * u[..., s]
    return out


def ssm_loop(u, log_a, b, c, x0, mask=None):
    """x_t = a x_{t-1} + b u_t (skipped where mask is False), y_t = Re(sum_n c_n x_t,n)."""
    a = torch.exp(log_a)
    x, ys = x0, []
    for t in range(u.shape[-1]):
        x_new = a * x + b * u[:, :, t, None]
        x = x_new if mask is None else torch.where(mask[:, t, None, None], x_new, x)
        ys.append((c * x).sum(-1).real)
    return torch.stack(ys, dim=-1), x


def draw(*shape, seed=0, complex_=False, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    if complex_:
        parts = torch.randn(*shape, 2, generator=g, dtype=torch.float64) * scale
        return torch.complex(parts[..., 0], parts[..., 1])
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def system(seed=0, decay=0.3):
    """A stable diagonal system: log_a with real part in (-decay, 0) and any phase."""
    g = torch.Generator().manual_seed(seed)
    re = -decay * torch.rand(H, N, generator=g, dtype=torch.float64)
    im = 2 * torch.randn(H, N, generator=g, dtype=torch.float64)
    return (
        torch.complex(re, im),
        draw(H, N, seed=seed + 1, complex_=True),
        draw(H, N, seed=seed + 2, complex_=True),
    )


def test_fft_size_is_the_smallest_5_smooth_length():
    def smooth(m):
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        return m == 1

    for n in range(1, 400):
        size = fft_size(n)
        assert size >= n and smooth(size)
        assert not any(smooth(m) for m in range(n, size))


@pytest.mark.parametrize("seq_len", [1, 2, 3, 13, 64, 100])
def test_causal_conv_equals_direct_sum(seq_len):
    u, k = draw(B, H, seq_len, seed=1), draw(H, seq_len, seed=2)
    torch.testing.assert_close(causal_conv(u, k), direct_conv(u, k), **F64)
    # the broadcast the other way round, and equal shapes
    torch.testing.assert_close(causal_conv(k, u), direct_conv(k, u), **F64)
    k_full = draw(B, H, seq_len, seed=3)
    torch.testing.assert_close(causal_conv(u, k_full), direct_conv(u, k_full), **F64)


def test_causal_conv_is_causal_and_checks_lengths():
    u, k = draw(2, 20, seed=4), draw(20, seed=5)
    y = causal_conv(u, k)
    u2 = u.clone()
    u2[:, 12:] += 100.0  # the future changes
    torch.testing.assert_close(causal_conv(u2, k)[:, :12], y[:, :12], **F64)
    with pytest.raises(ValueError, match="length"):
        causal_conv(u, k[:-1])
    assert causal_conv(u[:, :0], k[:0]).shape == (2, 0)


@pytest.mark.parametrize("k_shape", [(H, 11), (B, H, 11)], ids=str)
def test_causal_conv_gradients(k_shape):
    u = draw(B, H, 11, seed=6).requires_grad_(True)
    k = draw(*k_shape, seed=7).requires_grad_(True)
    w = draw(B, H, 11, seed=8)
    got = torch.autograd.grad((causal_conv(u, k) * w).sum(), (u, k))
    want = torch.autograd.grad((direct_conv(u, k) * w).sum(), (u, k))
    for g_got, g_want in zip(got, want):
        torch.testing.assert_close(g_got, g_want, **F64)
    small_u = draw(2, 2, 6, seed=9).requires_grad_(True)
    small_k = draw(*k_shape[:-2], 2, 6, seed=10)
    small_k = small_k[..., -2:, :].clone().requires_grad_(True)  # (2, 6) or (3, 2, 6)
    small_u = small_u if small_k.dim() == 2 else small_u[:1]
    assert torch.autograd.gradcheck(causal_conv, (small_u, small_k))


def test_cexp_equals_complex_exp():
    z = draw(50, seed=9, complex_=True, scale=3.0)
    torch.testing.assert_close(cexp(z), torch.exp(z), **F64)


@pytest.mark.parametrize("length", [1, 7, BLOCK, BLOCK + 1, 3 * BLOCK + 5])
def test_real_vandermonde_and_powers_sum(length):
    log_a, _, _ = system(seed=10, decay=0.05)
    coef = draw(H, 2, N, seed=11, complex_=True)
    got = real_vandermonde(coef, log_a, length)
    steps = torch.arange(length, dtype=torch.float64)
    table = torch.exp(log_a[:, None, :] * steps[:, None])  # (H, L, N)
    want = torch.einsum("hmn,hln->hml", coef, table).real
    assert got.shape == (H, 2, length)
    torch.testing.assert_close(got, want, **F64)

    u = draw(B, H, length, seed=12)
    want_sum = torch.einsum("bhl,hln->bhn", u.to(table.dtype), table.flip(1))
    torch.testing.assert_close(powers_sum(u, log_a), want_sum, **F64)

    x0 = draw(B, H, N, seed=13, complex_=True)
    c = draw(H, N, seed=14, complex_=True)
    want_resp = torch.einsum("bhn,hln->bhl", c * x0, table).real
    torch.testing.assert_close(initial_state_response(c, log_a, x0, length), want_resp, **F64)


@pytest.mark.parametrize("seq_len", [1, 13, 2 * BLOCK + 3])
def test_lti_conv_equals_the_recurrence(seq_len):
    log_a, b, c = system(seed=20)
    u, x0 = draw(B, H, seq_len, seed=21), draw(B, H, N, seed=22, complex_=True)
    y, final = lti_conv(u, log_a, b, c, x0)
    y_ref, final_ref = ssm_loop(u, log_a, b, c, x0)
    torch.testing.assert_close(y, y_ref, **F64)
    torch.testing.assert_close(final, final_ref, **F64)
    # a zero state that needs no gradient takes the shortcut; same result as the loop
    zero = torch.zeros_like(x0)
    y0, final0 = lti_conv(u, log_a, b, c, zero)
    y0_ref, final0_ref = ssm_loop(u, log_a, b, c, zero)
    torch.testing.assert_close(y0, y0_ref, **F64)
    torch.testing.assert_close(final0, final0_ref, **F64)


def masks(seq_len: int) -> dict[str, torch.Tensor]:
    right = torch.ones(B, seq_len, dtype=torch.bool)
    right[0, 9:], right[1, 4:] = False, False
    left = right.flip(1)
    holes = torch.rand(B, seq_len, generator=torch.Generator().manual_seed(0)) > 0.4
    holes[2] = False  # a row with no real token at all
    return {"right": right, "left": left, "holes": holes}


@pytest.mark.parametrize("kind", ["right", "left", "holes"])
def test_lti_conv_with_mask_skips_steps(kind):
    seq_len = 17
    mask = masks(seq_len)[kind]
    log_a, b, c = system(seed=30)
    u, x0 = draw(B, H, seq_len, seed=31) * 3, draw(B, H, N, seed=32, complex_=True)
    y, final = lti_conv(u, log_a, b, c, x0, mask)
    y_ref, final_ref = ssm_loop(u, log_a, b, c, x0, mask)
    assert torch.isfinite(y).all()
    keep = mask[:, None, :].expand_as(y)
    torch.testing.assert_close(y[keep], y_ref[keep], **F64)
    torch.testing.assert_close(final, final_ref, **F64)


def test_lti_conv_pieces_equal_whole():
    log_a, b, c = system(seed=40)
    u, x0 = draw(B, H, 40, seed=41), draw(B, H, N, seed=42, complex_=True)
    y_whole, final_whole = lti_conv(u, log_a, b, c, x0)
    ys, x = [], x0
    for piece in torch.split(u, [15, 1, 24], dim=-1):
        y, x = lti_conv(piece, log_a, b, c, x)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, dim=-1), y_whole, **F64)
    torch.testing.assert_close(x, final_whole, **F64)


@pytest.mark.parametrize("with_mask", [False, True])
def test_lti_conv_gradients_equal_the_loop(with_mask):
    seq_len = 9
    mask = masks(seq_len)["holes"] if with_mask else None
    log_a0, b0, c0 = system(seed=50)
    u0, x00 = draw(B, H, seq_len, seed=51), draw(B, H, N, seed=52, complex_=True)
    w_y = draw(B, H, seq_len, seed=53)
    if mask is not None:
        w_y = w_y * mask[:, None, :]  # outputs at masked steps are unspecified

    def grads(fn):
        args = [t.clone().requires_grad_(True) for t in (u0, log_a0, b0, c0, x00)]
        y, final = fn(*args, mask)
        loss = (y * w_y).sum() + (final.abs() ** 2).sum()
        return torch.autograd.grad(loss, args)

    for got, want in zip(grads(lti_conv), grads(ssm_loop)):
        torch.testing.assert_close(got, want, **F64)


def test_lti_conv_gradcheck():
    log_a, b, c = (t[:2, :2] for t in system(seed=60))  # 2 channels, 2 modes: keep it quick
    args = (draw(2, 2, 5, seed=61), log_a, b, c, draw(2, 2, 2, seed=62, complex_=True))
    args = tuple(t.clone().requires_grad_(True) for t in args)
    mask = torch.tensor([[True, False, True, True, False], [False, False, True, True, True]])

    def fn(*a):
        return lti_conv(*a, mask=mask)

    assert torch.autograd.gradcheck(lti_conv, args, eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-5)


def test_lti_conv_float32_on_a_long_sequence():
    """float32 over T = 2000 with slow modes (|a| close to 1) against float64."""
    log_a, b, c = system(seed=70, decay=0.01)
    u, x0 = draw(2, H, 2000, seed=71), draw(2, H, N, seed=72, complex_=True)
    y64, f64 = lti_conv(u, log_a, b, c, x0)
    y32, f32 = lti_conv(
        u.float(),
        log_a.to(torch.complex64),
        b.to(torch.complex64),
        c.to(torch.complex64),
        x0.to(torch.complex64),
    )
    # eps 1.2e-7 times a kernel sum over ~1/0.01 effective steps and phases up to 2 * 2000
    # rad (the rounding of l * log a): relative errors of a few 1e-5 are the float32 floor
    assert (y32.double() - y64).abs().max() <= 1e-3 * y64.abs().max()
    assert (f32.to(torch.complex128) - f64).abs().max() <= 1e-3 * f64.abs().max()
