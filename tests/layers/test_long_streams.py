"""Long streams stay finite: every registered layer runs ``step`` over a long stream of random
input with finite outputs and states inside bounds derived from its own equations.

The input is uniform on [-X, X]^D with X = sqrt(3) (unit variance, like ``randn``, but with a
hard bound |x_j| <= X that the derivations below use). Each bound is computed from the
layer's actual weights in float64, per channel, mostly by the rule "|W x + b|_i <=
sum_j |W_ij| X_j + |b_i|" (``lin``), and then by the recurrence itself:

- a tanh or a convex combination of values in [-1, 1] stays in [-1, 1] (rnn, gru, paragru,
  paralstm; the lstm's h);
- a linear recurrence h_t = a_t h_{t-1} + b_t with |a_t| <= a_max < 1 and |b_t| <= b_max stays
  within b_max / (1 - a_max) (by induction); when b_t shrinks with 1 - a_t (dt in mamba and
  mamba2, sqrt(1 - a^2) in rglru) the bound is taken at the worst a_t instead (see those
  functions), so it stays finite as a_t -> 1;
- a normalisation (LayerNorm / GroupNorm / RMSNorm over n values) gives outputs of at most
  sqrt(n - 1) (mean-centred) or sqrt(n) (RMS) times the scale, plus the bias.

The layer's math says otherwise for two layers, which are tested for what does hold:

- global attention keeps every token in its KV cache, so it stops at ``max_len`` by design:
  it runs to max_len and the next step raises a ValueError naming max_len; attention with
  a window runs the whole stream with its cache bounded;
- Aaren's softmax denominator u_t = sum_i e^{s_i - m_t} grows with the length (between
  t e^{-2 S} and t for scores |s| <= S): asserted to grow so; its max m and its normalised
  accumulator w / u (a convex combination of values) stay bounded, and its output is finite.

States are checked every ``CHECK_EVERY`` steps during the stream, and |output| through a
running elementwise maximum (torch.maximum propagates NaN, so a NaN output at any step
fails the check). Parameters that the initialisation sets to exactly zero (rwkv's output
projections, slstm's recurrent weights, zero biases, ...) are drawn N(0, 0.1^2) first, so
that every path of the layer carries signal, as after training; the bounds are computed
from the weights actually used.

Tolerance: the bounds hold in exact arithmetic; float32 evaluation may exceed a tight one
(|h| <= 1 of a convex combination) by a rounding error of a few ulps, so values may exceed
their bounds by ``REL`` = 1e-4 relative plus ``ABS`` = 1e-6 absolute. The other bounds are
worst cases over every input in the box and sit far above the values seen (the observed
maxima are 1e-5 to 1 times their bounds): they catch blow-ups, which grow geometrically or
reach inf/NaN within the stream, not small errors, which the contract tests catch against
the float64 references.

Speed: ``STEPS`` = 4,000 python-level steps per layer in the default run, at d_model 16,
batch 2, four state checks: a blow-up grows geometrically or reaches inf/NaN well within
them. At 10,000 steps the slowest layers took up to 1.3 ms a step on the 2-core machine
(pytest --durations on a fresh clone, 2026-12-06: titans 13.1 s, gated_deltanet 11.2 s, rwkv
10.9 s), about 2 min of the default run for all of them; ``-m slow`` runs 1,000,000 steps
for the layers in ``CHEAP`` (1-5 min each).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from statewise import layers
from statewise.errors import ArgumentError
from statewise.layers.base import SequenceMixer

D_MODEL, BATCH = 16, 2
X = math.sqrt(3.0)  # |x_j| <= X; uniform on [-X, X] has unit variance
STEPS = 4_000
SLOW_STEPS = 1_000_000
CHECK_EVERY = 1_000
REL, ABS = 1e-4, 1e-6  # float32 rounding above exact-arithmetic bounds (module docstring)
WINDOW = 32  # attention's window in the long-stream test (its cache holds WINDOW - 1 tokens)
# layers whose step is cheap enough for 1,000,000 steps under -m slow (measured at D16 B2
# on this machine: each at most ~160 us per step, so at most ~3 min per layer)
CHEAP = ("aaren", "gru", "hgrn", "lru", "lstm", "mingru", "minlstm", "paragru", "paralstm", "rnn")

Check = Callable[[object, int, torch.Tensor], Iterator[tuple[str, torch.Tensor, torch.Tensor]]]


@dataclass
class Bounds:
    """output: a bound on |y| per channel (D,); state(state, t, x_t) yields (label, value,
    bound) after t steps whose last input was x_t, and asserts exact invariants itself.
    max_steps: the longest stream the bounds hold for (None: any length)."""

    output: torch.Tensor
    state: Check
    max_steps: int | None = None


# ---------------------------------------------------------------- helpers
def _w(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def lin(weight: torch.Tensor, x_bound, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Per output, a bound on |W x + b| for |x_j| <= x_bound[j] (a number or a vector)."""
    w = _w(weight).abs()
    xb = torch.as_tensor(x_bound, dtype=torch.float64).expand(w.shape[-1])
    out = w @ xb
    return out if bias is None else out + _w(bias).abs()


def top(weight: torch.Tensor, x_bound, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Per output, the largest value W x + b can take for |x_j| <= x_bound[j] (bias signed)."""
    out = lin(weight, x_bound)
    return out if bias is None else out + _w(bias)


def geometric(b_max: torch.Tensor, a_max: torch.Tensor) -> torch.Tensor:
    """b_max / (1 - a_max): |h| stays within it if |h_t| <= a_max |h_{t-1}| + b_max, h_0 = 0."""
    assert bool((a_max < 1).all()), "the layer's decay reached 1: no bound"
    return b_max / (1.0 - a_max)


def centred_norm(n: int, weight: torch.Tensor | None, bias: torch.Tensor | None = None):
    """|LayerNorm / GroupNorm output| over n values: |x_i - mean| / std <= sqrt(n - 1) (the
    biased std; eps only lowers it), times |weight| plus |bias|."""
    out = torch.full((1,), math.sqrt(n - 1), dtype=torch.float64)
    if weight is not None:
        out = out * _w(weight).abs()
    return out if bias is None else out + _w(bias).abs()


def rms_norm(n: int, weight: torch.Tensor) -> torch.Tensor:
    """|RMSNorm output| over n values: |x_i| / rms(x) <= sqrt(n), times |weight|."""
    return math.sqrt(n) * _w(weight).abs()


def pair_bound(b: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """A rotation of the pair (u, v) keeps u^2 + v^2: each rotated entry is within
    sqrt(b_u^2 + b_v^2)."""
    return torch.sqrt(b**2 + b[partner] ** 2)


def complex_abs(pairs: torch.Tensor) -> torch.Tensor:
    """|z| of complex numbers stored as (..., 2) real pairs."""
    return torch.linalg.vector_norm(pairs, dim=-1)


# ---------------------------------------------------------- nonlinear cells
def _cell_rows(layer, gates: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per gate: (W_ih rows, W_hh rows, b_ih + b_hh rows), torch.nn's gate order."""
    h = layer.hidden_size
    return [
        (
            layer.weight_ih[g * h : (g + 1) * h],
            layer.weight_hh[g * h : (g + 1) * h],
            _w(layer.bias_ih[g * h : (g + 1) * h]) + _w(layer.bias_hh[g * h : (g + 1) * h]),
        )
        for g in range(gates)
    ]


def bounds_tanh_cell(layer) -> Bounds:
    """rnn: h = tanh(.) in [-1, 1]. gru: h' = (1 - z) n + z h with n = tanh(.) and h_0 = 0, a
    convex combination, so |h| <= 1. The output is h."""
    one = torch.ones(layer.hidden_size, dtype=torch.float64)

    def state(s, t, x):
        yield "h", s, one

    return Bounds(one, state)


def bounds_lstm(layer) -> Bounds:
    """c' = f c + i g, |g| <= 1, |h| = |o tanh c| <= 1, so the gates' pre-activations are within
    P = |W_i x| + |W_h h| + |b|; with f <= sigmoid(P_f) = f_max and i <= i_max:
    |c| <= i_max / (1 - f_max) (the fixed point of |c'| <= f_max |c| + i_max)."""
    (wi_i, wh_i, b_i), (wi_f, wh_f, b_f), _, _ = _cell_rows(layer, 4)
    i_max = torch.sigmoid(lin(wi_i, X) + lin(wh_i, 1.0) + b_i)
    f_max = torch.sigmoid(lin(wi_f, X) + lin(wh_f, 1.0) + b_f)
    c_bound = geometric(i_max, f_max)
    one = torch.ones(layer.hidden_size, dtype=torch.float64)

    def state(s, t, x):
        h, c = s
        yield "h", h, one
        yield "c", c, c_bound

    return Bounds(one, state)


def bounds_paracell(layer) -> Bounds:
    """paragru: h' = h + z (n - h), |n| <= 1: convex, |h| <= 1. paralstm: c' = c~ + f (c - c~)
    with |c~| <= 1: convex, |c| <= 1, and |h| = |o tanh c| <= 1. The output is h."""
    one = torch.ones(layer.d_hidden, dtype=torch.float64)

    def state(s, t, x):
        for i, leaf in enumerate(s if isinstance(s, tuple) else (s,)):
            yield f"state[{i}]", leaf, one

    return Bounds(one, state)


def bounds_slstm(layer) -> Bounds:
    """Stabilised sLSTM: c / n is a weighted mean of tanh(z), so |c| <= n and |h| = |o c / n|
    <= 1; the pre-activations are within |W x| + |R h| + |b| (I for i~, P_f for f~). The
    stabiliser m_t = max(log f_t + m_{t-1}, i~_t) (the first step: i~_1) is a max of
    (sum of log f <= 0) + i~_s, so |m| <= I. n_t = sum_s e^{F[t,s] + i~_s - m_t} with
    F[t,s] = log f_{s+1} + .. + log f_t <= (t - s) log f_max and m_t >= i~_t, so
    n_t <= e^{2I} / (1 - f_max); the largest term is 1, so n_t >= 1. The output is a
    per-head GroupNorm of h (d values) with a scale."""
    d, heads = layer.head_dim, layer.n_heads
    w, b = layer.in_proj.weight, layer.in_proj.bias
    rec = _w(layer.recurrent_weight).abs().sum(-1).reshape(4, -1)  # |R_g h| with |h| <= 1
    width = layer.d_model
    pre = [
        lin(w[g * width : (g + 1) * width], X, b[g * width : (g + 1) * width]) + rec[g]
        for g in range(4)
    ]
    i_bound = pre[0]
    f_max = torch.sigmoid(pre[1])
    n_bound = torch.exp(2 * i_bound) * geometric(torch.ones_like(f_max), f_max)
    one = torch.ones(width, dtype=torch.float64)

    def state(s, t, x):
        yield "h", s["h"], one
        yield "m", s["m"], i_bound
        yield "n", s["n"], n_bound
        assert bool((s["n"] >= 1 - REL).all()), f"sLSTM normaliser below 1 at step {t}"
        yield "c (against n)", s["c"].abs() / s["n"], one

    output = centred_norm(d, layer.norm_weight)
    assert heads * d == width
    return Bounds(output, state)


# ------------------------------------------------------- diagonal linear
def bounds_min_rnn(layer) -> Bounds:
    """minGRU: h' = (1 - z) h + z h~ (a = sigmoid(-g), b = sigmoid(g) h~); minLSTM: a = f',
    b = i' h~ with f' + i' = 1. Both convex: |h| <= max |h~| = |W_h x + b_h|."""
    h = layer.d_hidden
    w, b = layer.to_gate_hidden.weight, layer.to_gate_hidden.bias
    part = layer.n_parts - 1  # the candidate is the last part
    bound = lin(w[part * h : (part + 1) * h], X, b[part * h : (part + 1) * h])
    assert layer.out_proj is None

    def state(s, t, x):
        yield "h", s, bound

    return Bounds(bound, state)


def bounds_hgrn(layer) -> Bounds:
    """h' = lambda h + (1 - lambda) silu(W_i x), lambda in (0, 1): convex, |h| <= |W_i x|
    (|silu(u)| <= |u|). Output W_o (RMSNorm(h) * silu(W_g x))."""
    bound = lin(layer.i_proj.weight, X)
    gate = lin(layer.g_proj.weight, X)
    output = lin(layer.o_proj.weight, rms_norm(layer.d_hidden, layer.g_norm.weight) * gate)

    def state(s, t, x):
        yield "h", s, bound

    return Bounds(output, state)


def bounds_lru(layer) -> Bounds:
    """h' = lambda h + gamma (B x), |lambda| < 1 constant: |h| <= gamma |B x| / (1 - |lambda|)
    with |(B x)_n| <= sum_j |B_nj| X (B complex). Output Re(C h) + D x."""
    lam = _w(layer.eigenvalues().abs())
    gamma = torch.exp(_w(layer.gamma_log))
    b_abs = torch.sqrt(_w(layer.B_re) ** 2 + _w(layer.B_im) ** 2)
    h_bound = geometric(gamma * (b_abs @ torch.full((layer.d_model,), X, dtype=torch.float64)), lam)
    c_abs = torch.sqrt(_w(layer.C_re) ** 2 + _w(layer.C_im) ** 2)
    output = c_abs @ h_bound + _w(layer.D).abs() * X

    def state(s, t, x):
        yield "|h|", complex_abs(s), h_bound

    return Bounds(output, state)


def bounds_rglru(layer) -> Bounds:
    """u = W_x x + b (the conv window holds u), c = conv(u): |c| <= sum_j |w_j| U + |b_c|.
    r = sigmoid(c W_a + b_a) >= sigmoid(-R), so a = exp(-8 r softplus(Lambda)) <= a_max < 1.
    h' = a h + sqrt(1 - a^2) (i c), |i c| <= C: if |h| <= H = C sqrt((1 + a_max) / (1 - a_max))
    then |h'| <= a H + sqrt(1 - a^2) C <= H for every a <= a_max (sqrt((1 + a)/(1 - a)) grows
    with a); the first step (a reset) gives |h| = |i c| <= C. Output W_out (h gelu(W_y x)) + b
    with |gelu(u)| <= |u|."""
    u_bound = lin(layer.linear_x.weight, X, layer.linear_x.bias)
    conv_w = _w(layer.conv_1d.weight[:, 0]).abs().sum(-1)
    c_bound = conv_w * u_bound + _w(layer.conv_1d.bias).abs()
    lru = layer.rg_lru
    blocks = c_bound.view(lru.n_heads, lru.block_width)
    r_reach = torch.einsum("hi,hij->hj", blocks, _w(lru.recurrent_gate_weight).abs())
    r_min = torch.sigmoid(-(r_reach + _w(lru.recurrent_gate_bias).abs())).flatten()
    a_max = torch.exp(-8.0 * r_min * F.softplus(_w(lru.recurrent_param)))
    assert bool((a_max < 1).all())
    h_bound = c_bound * torch.sqrt((1 + a_max) / (1 - a_max))
    gate = lin(layer.linear_y.weight, X, layer.linear_y.bias)
    output = lin(layer.linear_out.weight, h_bound * gate, layer.linear_out.bias)

    def state(s, t, x):
        yield "conv window", s["conv"], u_bound
        yield "h", s["h"], h_bound
        assert bool((s["pos"] == t).all()), f"pos {s['pos'].tolist()} after {t} steps"

    return Bounds(output, state)


def bounds_mamba(layer) -> Bounds:
    """u = W_u x (the conv window holds u), c = silu(conv(u)); (r, B, C) = W_x c;
    dt = softplus(W_dt r + b) in (0, dt_max]; per (e, n): h' = e^{-dt |A|} h + dt c_e B_n.
    With K = max |c_e B_n|, |h| <= K g(dt_max) where g(dt) = dt / (1 - e^{-dt |A|}) (g grows with
    dt: 1 - e^{-s}(1 + s) >= 0), by induction: e^{-dt|A|} K g(dt_max) + dt K <= K g(dt_max) iff
    g(dt) <= g(dt_max). Output W_out ((h C + D c) silu(z))."""
    e, n, r = layer.d_inner, layer.d_state, layer.dt_rank
    w_in = layer.in_proj.weight
    u_bound = lin(w_in[:e], X)
    z_bound = lin(w_in[e:], X)
    conv = layer.conv1d
    c_bound = _w(conv.weight[:, 0]).abs().sum(-1) * u_bound + _w(conv.bias).abs()
    xw = layer.x_proj.weight
    r_bound, b_bound, cc_bound = (
        lin(xw[a:z], c_bound) for a, z in ((0, r), (r, r + n), (r + n, r + 2 * n))
    )
    dt_max = F.softplus(top(layer.dt_proj.weight, r_bound, layer.dt_proj.bias))  # (E,)
    a_abs = torch.exp(_w(layer.A_log))  # (E, N)
    g = dt_max[:, None] / -torch.expm1(-dt_max[:, None] * a_abs)
    h_bound = c_bound[:, None] * b_bound[None, :] * g
    y_bound = h_bound @ cc_bound + _w(layer.D).abs() * c_bound
    output = lin(layer.out_proj.weight, y_bound * z_bound)

    def state(s, t, x):
        yield "conv window", s["conv"], u_bound
        yield "ssm", s["ssm"], h_bound

    return Bounds(output, state)


def bounds_mamba2(layer) -> Bounds:
    """(z, xBC, dt) = W_in x; the conv window holds xBC; (x, B, C) = silu(conv(xBC));
    dt = softplus(dt + dt_bias) <= dt_max; per head S' = e^{-dt |A|} S + B^T (dt x):
    |S_np| <= |B_n| |x_p| g(dt_max), g as for mamba. y = C S + D x, then a gated RMSNorm
    over each group (|.| <= sqrt(width) |w|) and W_out."""
    e, heads, p = layer.d_inner, layer.n_heads, layer.head_dim
    gn = layer.n_groups * layer.d_state
    assert layer.n_groups == 1
    w_in = layer.in_proj.weight
    xbc_bound = lin(w_in[e : e + layer.conv_dim], X)
    conv = layer.conv1d
    act_bound = _w(conv.weight[:, 0]).abs().sum(-1) * xbc_bound + _w(conv.bias).abs()
    x_bound, b_bound = act_bound[:e].view(heads, p), act_bound[e : e + gn]
    dt_pre = top(w_in[e + layer.conv_dim :], X) + _w(layer.dt_bias)
    dt_max = F.softplus(dt_pre).clamp(*layer.dt_limit)  # (H,)
    g = dt_max / -torch.expm1(-dt_max * torch.exp(_w(layer.A_log)))  # (H,)
    s_bound = g[:, None, None] * b_bound[None, :, None] * x_bound[:, None, :]  # (H, N, P)
    output = lin(layer.out_proj.weight, rms_norm(e // layer.n_groups, layer.norm.weight))

    def state(s, t, x):
        yield "conv window", s["conv"], xbc_bound
        yield "ssm", s["ssm"], s_bound

    return Bounds(output, state)


def bounds_s4d(layer) -> Bounds:
    """x' = Abar x + Bbar u per (channel, mode), |Abar| = e^{Re(dt A)} < 1 constant:
    |x| <= |Bbar| X / (1 - |Abar|). y = Re(2C x) + D u, out = GLU(W gelu(y) + b) with
    |gelu(v)| <= |v| and |GLU(a, b)| = |a sigmoid(b)| <= |a|."""
    log_a, b_bar, c2 = layer.discretize()
    decay = -torch.expm1(_w(log_a.real))  # 1 - |Abar|, without cancellation
    x_bound = _w(b_bar.abs()) * X / decay  # (H, N/2)
    y_bound = (_w(c2.abs()) * x_bound).sum(-1) + _w(layer.D).abs() * X
    half = layer.d_model
    assert layer.output == "glu"
    output = lin(layer.out_proj.weight[:half], y_bound, layer.out_proj.bias[:half])

    def state(s, t, x):
        yield "|x|", complex_abs(s), x_bound

    return Bounds(output, state)


# ---------------------------------------------------------- matrix state
def bounds_hgrn2(layer) -> Bounds:
    """S' = diag(f) S + (1 - f) v^T per head: each row of S is a convex combination of the
    values seen (S_0 = 0), so |S_cp| <= max |v_p|. Output W_o LayerNorm(o)."""
    heads, d = layer.n_heads, layer.head_dim
    v = lin(layer.i_proj.weight, X).view(heads, 1, d)
    s_bound = v.expand(heads, d, d)
    normed = centred_norm(layer.d_model, layer.norm.weight, layer.norm.bias)
    output = lin(layer.o_proj.weight, normed.expand(layer.d_model))

    def state(s, t, x):
        yield "kv", s["kv"], s_bound

    return Bounds(output, state)


def bounds_delta_rule(layer) -> Bounds:
    """deltanet, gated_deltanet: conv window = the last K-1 projections W x (|.| <= lin);
    q, k, v = silu(conv) with |silu(u)| <= |u|; keys are L2-normalised (|k| < 1) and beta <=
    beta_max <= 2, so I - beta k k^T has norm <= 1 and each value column s_j of S obeys
    |s_j'| <= alpha |s_j| + beta_max |v_j|: with the decay alpha <= alpha_max < 1 (gated),
    |S_cj| <= |s_j| <= beta_max |v_j| / (1 - alpha_max); without it (deltanet) the bound
    grows linearly, t beta_max |v_j| after t steps from S_0 = 0 (the delta rule's state is
    not bounded a priori: keys nearly parallel with different targets pull it far). Output
    W_o (RMSNorm(o_h) w [silu(W_g x)]) with |RMSNorm| <= sqrt(d_v) |w|."""
    heads, dk, dv = layer.n_heads, layer.head_k, layer.head_v
    w_qkv = torch.cat([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight])
    pre = lin(w_qkv, X)  # (2 H d_k + H d_v,)
    if layer.use_short_conv:
        w_conv = _w(layer.conv1d.weight[:, 0]).abs().sum(-1)
        bias = layer.conv1d.bias
        act = w_conv * pre + (0.0 if bias is None else _w(bias).abs())
    else:
        act = pre
    v = act[2 * layer.key_dim :].view(heads, dv)
    beta_max = torch.sigmoid(top(layer.b_proj.weight, X)) * (2 if layer.negative_eigenvalues else 1)
    column = beta_max[:, None] * v  # (H, d_v): what one step adds to |s_j|
    gated = hasattr(layer, "A_log")
    if gated:
        least = _w(layer.dt_bias) - lin(layer.a_proj.weight, X)  # smallest softplus argument
        alpha_max = torch.exp(-torch.exp(_w(layer.A_log)) * F.softplus(least))
        s_bound = geometric(column, alpha_max[:, None])[:, None, :].expand(heads, dk, dv)
    normed = rms_norm(dv, layer.o_norm.weight).repeat(heads)
    if layer.use_gate:
        normed = normed * lin(layer.g_proj.weight, X)
    output = lin(layer.o_proj.weight, normed)

    def state(s, t, x):
        if layer.use_short_conv:
            yield "conv window", s["conv"], pre
        bound = s_bound if gated else (t * column)[:, None, :].expand(heads, dk, dv)
        yield "kv", s["kv"], bound

    return Bounds(output, state)


def _impulse_abs_sums(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """sum_{k < steps} |a^k b| elementwise: a (n, n), b (n, m) float64 -> (n, m)."""
    total, g = torch.zeros_like(b), b.clone()
    for _ in range(steps):
        total += g.abs()
        g = a @ g
    return total


def bounds_parallel_lmu(layer) -> Bounds:
    """u = W_u x + b_u, |u_c| <= U_c; m_t = sum_{k<t} Abar^k Bbar u_{t-k} (m_0 = 0), so
    |m_t[c, i]| <= U_c sum_{k<t} |(Abar^k Bbar)_i| <= U_c S_i with S the sum over the
    whole stream; y = f(W_m m + b_o + W_x x) with |f(v)| <= |v| (relu, gelu, identity)."""
    a_bar, b_bar = layer.system(torch.device("cpu"))
    s = _impulse_abs_sums(a_bar, b_bar[:, None], STEPS)[:, 0]  # (q,)
    u_bound = lin(layer.u_proj.weight, X, layer.u_proj.bias)  # (M,)
    m_bound = u_bound[:, None] * s  # (M, q)
    output = lin(layer.m_proj.weight, m_bound.flatten(), layer.m_proj.bias) + lin(
        layer.x_proj.weight, X
    )
    if layer.activation == "tanh":
        output = output.clamp(max=1.0)

    def state(m, t, x):
        yield "|m|", m, m_bound

    return Bounds(output, state, max_steps=STEPS)  # the impulse sums run to STEPS


def bounds_lmu(layer) -> Bounds:
    """h = tanh(.) in [-1, 1]. The memory with its feedback e_m is the linear system
    m_t = G m_{t-1} + (I_M x Bbar) w_t on the flattened memory (M q), G = I_M x Abar +
    (I_M x Bbar) e_m, driven by w = e_x x + e_h h_{t-1} with |w| <= lin(e_x, X) + lin(e_h, 1):
    |m_t| <= sum_{k<t} |G^k (I_M x Bbar)| |w|max (finite for every t; it stays bounded in
    t when G is stable). y = h (or W_o h)."""
    a_bar, b_bar = layer.system(torch.device("cpu"))
    eye = torch.eye(layer.memory_d, dtype=torch.float64)
    drive = torch.kron(eye, b_bar[:, None])  # (M q, M)
    g = torch.kron(eye, a_bar) + drive @ _w(layer.e_m)
    w_bound = lin(layer.e_x, X) + lin(layer.e_h, 1.0)  # (M,)
    m_bound = (_impulse_abs_sums(g, drive, STEPS) @ w_bound).view(layer.memory_d, layer.order)
    one = torch.ones(layer.hidden_size, dtype=torch.float64)
    output = one if layer.out_proj is None else lin(layer.out_proj.weight, one)

    def state(s, t, x):
        yield "|m|", s["m"], m_bound
        yield "|h|", s["h"], one

    return Bounds(output, state, max_steps=STEPS)  # the impulse sums run to STEPS


def bounds_titans(layer) -> Bounds:
    """titans: the read o_t = M_t(q_t) goes through a per-head RMSNorm over d = D / H values,
    so each normalised entry is within sqrt(d) |w| whatever the memory holds, and the output
    W_o concat_h(.) within lin(W_o, sqrt(d) |w|) per channel. The memory itself has no bound
    in the equations: gradient descent with momentum on |M(k) - v|^2 (an MLP of depth 2, a
    step size up to max_lr, stale chunk-start weights) can diverge, so the weights are only
    required finite (the layer's own output check refuses a non-finite state), and the
    position counts the real tokens exactly."""
    heads = layer.n_heads
    out = lin(layer.o_proj.weight, rms_norm(layer.head_dim, layer.o_norm.weight).repeat(heads))

    def state(s, t, x):
        assert s["pos"].tolist() == [t] * s["pos"].shape[0], "pos must count the tokens"
        return iter(())

    return Bounds(out, state)


def bounds_block_recurrent(layer) -> Bounds:
    """Token keys/values k, v = W_kv x: lin. The state vectors C = C_0 + c enter through
    LN (centred_norm over D), their values h = W_skv LN(C): lin. Every attention output is a
    softmax average of values, so within max |v| or max |h| per channel of each head. The
    update z = W_so [.; .] (lin), and C <- sigma(b_f) C + (1 - sigma(b_f)) z is a convex
    combination per channel: |C_i| <= max(|C_0,i|, |z|) by induction from C_0, so the
    stored offset |c_i| = |C_i - C_0,i| <= that + |C_0,i|. The buffer holds the block's
    inputs (|x| <= X), its slots from pos on zero; pos = t mod W. y = W_o [.; .] (lin)."""
    width = layer.n_heads * layer.head_dim
    v = lin(layer.kv_proj.weight[width:], X)
    normed = centred_norm(layer.d_model, layer.state_norm.weight, layer.state_norm.bias)
    h = lin(layer.state_kv_proj.weight[width:], normed)
    z = lin(layer.state_o_proj.weight, torch.cat([h, v]))
    c0 = _w(layer.state_init).abs()
    c_bound = torch.maximum(c0, z) + c0  # (S, D)
    output = lin(layer.o_proj.weight, torch.cat([v, h]))
    w = layer.block_size

    def state(s, t, x):
        assert bool((s["pos"] == t % w).all()), f"pos {s['pos'].tolist()} after {t} steps"
        n = t % w
        assert not bool(s["x"][:, n:].any()), f"buffer slots from pos on not zero at step {t}"
        if n:
            assert torch.equal(s["x"][:, n - 1], x), f"the last input is not buffered at {t}"
        yield "c", s["c"], c_bound
        yield "x", s["x"], torch.full((1,), X, dtype=torch.float64)

    return Bounds(output, state)


def bounds_gateloop(layer) -> Bounds:
    """S' = diag(a) S + k^T v per head, a = sigmoid(W_a x + b) <= a_max < 1 per key channel:
    |S_cp| <= |k_c| |v_p| / (1 - a_max_c). Output W_o (silu(W_g x) LayerNorm(o))."""
    heads, d = layer.n_heads, layer.head_dim
    k = (lin(layer.k_proj.weight, X) * d**-0.5).view(heads, d)
    v = lin(layer.v_proj.weight, X).view(heads, d)
    a_max = torch.sigmoid(top(layer.a_proj.weight, X, layer.a_proj.bias)).view(heads, d)
    s_bound = geometric(k[:, :, None] * v[:, None, :], a_max[:, :, None])
    gate = lin(layer.g_proj.weight, X)
    normed = centred_norm(layer.d_model, layer.norm.weight, layer.norm.bias)
    output = lin(layer.out_proj.weight, gate * normed)

    def state(s, t, x):
        yield "kv", s["kv"], s_bound

    return Bounds(output, state)


def bounds_retnet(layer) -> Bounds:
    """S' = gamma_h S + k^T v per head, gamma_h = 1 - 2^{-5-h}; k is rotated in pairs
    (2i, 2i+1) (pair_bound) and scaled by d^{-1/2}: |S_cp| <= |k_c| |v_p| / (1 - gamma_h).
    Output W_o (silu(W_g x) GroupNorm(o)). pos counts the steps."""
    heads, d = layer.n_heads, layer.head_dim
    k = lin(layer.k_proj.weight, X).view(heads, d)
    k = torch.stack([pair_bound(row, torch.arange(d) ^ 1) for row in k]) * d**-0.5
    v = lin(layer.v_proj.weight, X).view(heads, d)
    gamma = torch.exp(_w(layer.log_decay(torch.device("cpu"), torch.float64)))
    s_bound = geometric(k[:, :, None] * v[:, None, :], gamma[:, None, None])
    gate = lin(layer.g_proj.weight, X)
    normed = centred_norm(d, layer.group_norm.weight, layer.group_norm.bias)
    output = lin(layer.out_proj.weight, gate * normed)

    def state(s, t, x):
        yield "kv", s["kv"], s_bound
        assert bool((s["pos"] == t).all()), f"pos {s['pos'].tolist()} after {t} steps"

    return Bounds(output, state)


def bounds_mlstm(layer) -> Bounds:
    """Stabilised mLSTM from the zero state (m_0 = 0): m_t = max(F[t,0], max_s F[t,s] + i~_s)
    with F <= 0 sums of log f, so -I <= i~_t <= m_t <= I (|i~| <= I). (C, n) = sum_s
    e^{F[t,s] + i~_s - m_t} (k_s^T v_s, k_s), each weight <= f_max^{t-s} e^{2I} (m_t >= i~_t),
    so |C_cp| <= |k_c| |v_p| e^{2I} / (1 - f_max) and |n_c| <= |k_c| e^{2I} / (1 - f_max).
    Output W_out (sigmoid(W_o x) norm(h)), norm a per-head GroupNorm of d_v values."""
    heads, dk, dv = layer.n_heads, layer.d_k, layer.d_v
    k = (lin(layer.k_proj.weight, X) * dk**-0.5).view(heads, dk)
    v = lin(layer.v_proj.weight, X).view(heads, dv)
    i_bound = lin(layer.i_proj.weight, X, layer.i_proj.bias)  # (H,)
    f_max = torch.sigmoid(top(layer.f_proj.weight, X, layer.f_proj.bias))
    weight_sum = torch.exp(2 * i_bound) * geometric(torch.ones_like(f_max), f_max)  # (H,)
    c_bound = weight_sum[:, None, None] * k[:, :, None] * v[:, None, :]
    n_bound = weight_sum[:, None] * k
    output = lin(layer.out_proj.weight, centred_norm(dv, layer.norm_weight))

    def state(s, t, x):
        yield "C", s["C"], c_bound
        yield "n", s["n"], n_bound
        yield "m", s["m"], i_bound

    return Bounds(output, state)


def _lerp_bound(mu: torch.Tensor, reach: torch.Tensor | float, x_bound) -> torch.Tensor:
    """|h + (prev - h) alpha| = |(1 - alpha) h + alpha prev| for alpha in [mu - reach,
    mu + reach] and |h|, |prev| <= x_bound."""
    mu = _w(mu)
    lo, hi = mu - reach, mu + reach
    alpha = torch.maximum(lo.abs(), hi.abs())
    one_minus = torch.maximum((1 - lo).abs(), (1 - hi).abs())
    return (alpha + one_minus) * x_bound


def bounds_rwkv(layer) -> Bounds:
    """Time mix: h_* = h + (prev - h)(mu_* + m_*), |m_*| <= sum_r |W2| (tanh LoRA), so
    |h_*| <= (|alpha| + |1 - alpha|) X; r, k, v = W h_*; w_t = exp(-exp(d_t)) with
    d_t >= decay - sum_r |D_2| gives w_t <= w_max < 1: |S_cp| <= |k_c| |v_p| / (1 - w_max_c).
    att_shift is the last input exactly; ffn_shift is the last ln2(x + a), within its
    LayerNorm bound. Output a + sigmoid(.) W_v' relu(W_k' c_k)^2, a = W_o (GroupNorm(o)
    silu(W_g h_g))."""
    att, heads, d = layer.att, layer.n_heads, layer.head_dim
    reach = _w(att.time_maa_w2).abs().sum(1)  # (5, D): |m_w|, |m_k|, |m_v|, |m_r|, |m_g|
    maa = (att.time_maa_w, att.time_maa_k, att.time_maa_v, att.time_maa_r, att.time_maa_g)
    h_w, h_k, h_v, h_r, h_g = (_lerp_bound(mu, reach[i], X) for i, mu in enumerate(maa))
    k = lin(att.key.weight, h_k).view(heads, d)
    v = lin(att.value.weight, h_v).view(heads, d)
    d_min = _w(att.time_decay) - _w(att.time_decay_w2).abs().sum(0)
    w_max = torch.exp(-torch.exp(d_min)).view(heads, d)
    s_bound = geometric(k[:, :, None] * v[:, None, :], w_max[:, :, None])
    normed = centred_norm(d, att.ln_x.weight, att.ln_x.bias)
    a_bound = lin(att.output.weight, normed * lin(att.gate.weight, h_g))
    c_bound = centred_norm(layer.d_model, layer.ln2.weight, layer.ln2.bias)
    ffn = layer.ffn
    c_k = _lerp_bound(ffn.time_maa_k, 0.0, c_bound)
    output = a_bound + lin(ffn.value.weight, lin(ffn.key.weight, c_k) ** 2)

    def state(s, t, x):
        assert torch.equal(s["att_shift"], x), f"att_shift is not the last input at step {t}"
        yield "wkv", s["wkv"], s_bound
        yield "ffn_shift", s["ffn_shift"], c_bound

    return Bounds(output, state)


# ---------------------------------------------------------- attention-like
def bounds_windowed_attention(layer) -> Bounds:
    """The cache holds the last window - 1 keys (rotated in pairs (i, i + n): pair_bound) and
    values of W x; o is a softmax average of values, so |o| <= max |v|; y = W_o o."""
    heads, kv_heads, d = layer.n_heads, layer.n_kv_heads, layer.head_dim
    k = lin(layer.k_proj.weight, X, layer.k_proj.bias).view(kv_heads, d)
    n = len(layer._freqs)
    partner = torch.arange(d)
    partner[:n], partner[n : 2 * n] = torch.arange(n, 2 * n), torch.arange(n)
    k = torch.stack([pair_bound(row, partner) for row in k])
    v = lin(layer.v_proj.weight, X, layer.v_proj.bias).view(kv_heads, d)
    o = v.repeat_interleave(heads // kv_heads, dim=0).flatten()
    output = lin(layer.o_proj.weight, o, layer.o_proj.bias)

    def state(s, t, x):
        yield "k cache", s["k"], k
        yield "v cache", s["v"], v
        assert bool((s["pos"] == t).all()), f"pos {s['pos'].tolist()} after {t} steps"

    return Bounds(output, state)


def bounds_aaren(layer) -> Bounds:
    """Scores |s_h| <= S_h = sum_c |q_hc| |k_hc| / sqrt(d). m_t = max_i s_i: |m| <= S.
    u_t = sum_{i<=t} e^{s_i - m_t}: every term is in [e^{-2S}, 1], so t e^{-2S} <= u_t <= t: the
    denominator grows with the length, by design (asserted, with the float32 summation error
    of t additions, at most ~3 t 2^-24 relative per step count: 4 t 2^-24 allowed). w_t / u_t
    is a convex combination of the values: |w| <= u max |v|. Output W_o (w / u)."""
    heads, d = layer.n_heads, layer.head_dim
    k = lin(layer.k_proj.weight, X).view(heads, d)
    v = lin(layer.v_proj.weight, X).view(heads, d)
    s_bound = (_w(layer.query).abs() * k).sum(-1) * d**-0.5  # (H,)
    output = lin(layer.out_proj.weight, v.flatten())

    def state(s, t, x):
        drift = 1 + 4 * t * 2.0**-24
        u = s["u"].double()
        yield "m", s["m"], s_bound
        yield "u (upper)", u, torch.full_like(s_bound, t * drift)
        low = t * torch.exp(-2 * s_bound) / drift
        assert bool((u >= low).all()), f"u {u.min().item()} below {low.min().item()} at step {t}"
        yield "w / u", s["w"].double() / u[..., None], v

    return Bounds(output, state)


def bounds_cfc(layer) -> Bounds:
    """default: h = tanh(.)(1 - s) + s tanh(.), a convex combination: |h| <= 1; no_gate:
    tanh(.) + s tanh(.): |h| <= 2; pure: h = A - A exp(-dt (|w_tau| + |f|)) f with dt = 1,
    and |f| e^{-|f|} <= 1/e: |h| <= |A| (1 + 1/e). The output is W_o h (+ b) or h."""
    ones = torch.ones(layer.hidden_size, dtype=torch.float64)
    if layer.kind == "pure":
        h_bound = _w(layer.A).abs() * (1 + math.exp(-1))
    else:
        h_bound = ones * (2.0 if layer.kind == "no_gate" else 1.0)
    output = (
        h_bound
        if layer.out_proj is None
        else lin(layer.out_proj.weight, h_bound, layer.out_proj.bias)
    )

    def state(s, t, x):
        yield "h", s, h_bound

    return Bounds(output, state)


def bounds_ltc(layer) -> Bounds:
    """Each solver unfold sets v_j to a weighted mean, with positive weights (c, softplus'd
    conductances, sigmoids) and a denominator larger by eps, of v_j, v_leak_j and the
    reversal potentials E_ij, E^s_sj: |v_j| <= max(|v_leak_j|, max_i |E_ij|, max_s |E^s_sj|)
    from v_0 = 0. The output is v w_out + b_out, then W_o when hidden_size != d_model."""
    v_bound = torch.stack(
        [_w(layer.vleak).abs(), _w(layer.erev).abs().amax(0), _w(layer.sensory_erev).abs().amax(0)]
    ).amax(0)
    mapped = v_bound * _w(layer.output_w).abs() + _w(layer.output_b).abs()
    output = (
        mapped
        if layer.out_proj is None
        else lin(layer.out_proj.weight, mapped, layer.out_proj.bias)
    )

    def state(s, t, x):
        yield "v", s, v_bound

    return Bounds(output, state)


BOUNDS: dict[str, Callable[[SequenceMixer], Bounds]] = {
    "aaren": bounds_aaren,
    "block_recurrent": bounds_block_recurrent,
    "cfc": bounds_cfc,
    "deltanet": bounds_delta_rule,
    "gated_deltanet": bounds_delta_rule,
    "gateloop": bounds_gateloop,
    "gru": bounds_tanh_cell,
    "hgrn": bounds_hgrn,
    "hgrn2": bounds_hgrn2,
    "lmu": bounds_lmu,
    "lru": bounds_lru,
    "lstm": bounds_lstm,
    "ltc": bounds_ltc,
    "mamba": bounds_mamba,
    "mamba2": bounds_mamba2,
    "mingru": bounds_min_rnn,
    "minlstm": bounds_min_rnn,
    "mlstm": bounds_mlstm,
    "paragru": bounds_paracell,
    "parallel_lmu": bounds_parallel_lmu,
    "paralstm": bounds_paracell,
    "retnet": bounds_retnet,
    "rglru": bounds_rglru,
    "rnn": bounds_tanh_cell,
    "rwkv": bounds_rwkv,
    "s4d": bounds_s4d,
    "slstm": bounds_slstm,
    "titans": bounds_titans,
}
# global attention stops at max_len by design; its window form has the bound above
EXCEPTED = {"attention": "global attention's KV cache stops at max_len (tested below)"}


# ---------------------------------------------------------------- running
def build(name: str, **kwargs) -> SequenceMixer:
    """The registered layer at D_MODEL, zero-initialised parameters drawn N(0, 0.1^2)."""
    torch.manual_seed(0)
    layer = layers.get(name, d_model=D_MODEL, **kwargs)
    with torch.no_grad():
        for p in layer.parameters():
            if p.is_floating_point() and not bool(p.any()):
                p.normal_(0.0, 0.1)
    return layer


def within(label: str, value: torch.Tensor, bound: torch.Tensor, t: int) -> None:
    assert bool(torch.isfinite(bound).all()), f"{label}: no finite bound (a decay reached 1?)"
    value = value.double().abs()
    limit = bound.expand_as(value) * (1 + REL) + ABS
    assert bool(torch.isfinite(value).all()), f"{label} is not finite after {t} steps"
    over = value > limit
    if bool(over.any()):
        ratio = (value / limit).max().item()
        worst = value[over].max().item()
        raise AssertionError(
            f"{label} exceeds its bound after {t} steps: |value| up to {worst:.4g}, "
            f"{ratio:.3g} x its bound"
        )


def run_stream(layer: SequenceMixer, bounds: Bounds, steps: int, seed: int = 0) -> object:
    """``steps`` calls of ``layer.step`` on uniform [-X, X] input; the state is checked every
    CHECK_EVERY steps (and after the last step) and |y| through its running maximum.
    Returns the final state."""
    if bounds.max_steps is not None and steps > bounds.max_steps:
        raise ValueError(f"these bounds hold for {bounds.max_steps} steps, not {steps}")
    gen = torch.Generator().manual_seed(seed)
    state = layer.init_state(BATCH)
    peak = torch.zeros(BATCH, D_MODEL)
    done = 0
    with torch.no_grad():
        while done < steps:
            n = min(CHECK_EVERY, steps - done)
            xs = (torch.rand(n, BATCH, D_MODEL, generator=gen) * 2 - 1) * X
            for x_t in xs:
                y, state = layer.step(x_t, state)
                torch.maximum(peak, y.abs(), out=peak)  # NaN propagates into peak
            done += n
            for label, value, bound in bounds.state(state, done, xs[-1]):
                within(label, value, bound, done)
            within("|output|", peak, bounds.output, done)
    return state


STREAM_LAYERS = [n for n in layers.names() if n not in EXCEPTED]


def test_every_layer_has_a_derived_bound():
    missing = [n for n in STREAM_LAYERS if n not in BOUNDS]
    assert not missing, f"no state bound derived for {missing}: add one to BOUNDS"


@pytest.mark.parametrize("name", STREAM_LAYERS)
def test_long_stream_stays_finite_and_bounded(name):
    layer = build(name)
    run_stream(layer, BOUNDS[name](layer), STEPS)


@pytest.mark.slow
@pytest.mark.parametrize("name", CHEAP)
def test_million_step_stream_stays_finite_and_bounded(name):
    layer = build(name)
    run_stream(layer, BOUNDS[name](layer), SLOW_STEPS, seed=1)


def test_windowed_attention_runs_the_whole_stream():
    layer = build("attention", window=WINDOW)
    run_stream(layer, bounds_windowed_attention(layer), STEPS)


def test_global_attention_stops_at_max_len_with_a_clear_error():
    """Global attention keeps every token (the cache is its state, bounded by max_len): it
    runs the first max_len steps with a bounded cache, then refuses the next one."""
    layer = build("attention")
    assert not layer.window
    state = run_stream(layer, bounds_windowed_attention(layer), layer.max_len)
    with pytest.raises(ArgumentError, match=f"max_len={layer.max_len}"):
        layer.step(torch.zeros(BATCH, D_MODEL), state)
