"""statewise's LSTM/GRU/RNN against torch.nn's, with copied weights, and the three mixers.

The drop-ins must give torch.nn's outputs, final states and gradients (w.r.t. input, initial
state and every parameter) for every combination of the constructor's options, in float64
(to rounding) and float32; load each other's state_dicts; and reject bad input with a clear
ValueError/TypeError naming the argument.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import statewise.layers as L
from statewise.layers import GRU, LSTM, RNN
from statewise.ops.cells import CellWeights, cell_step

# torch.nn's own note that its oneDNN path has no LSTM projection
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")

I, H, P = 4, 5, 3  # input_size, hidden_size, proj_size when on
B, T = 3, 6

TORCH = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
OURS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}

TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=2e-6),
}


def _grid() -> list[tuple[str, dict]]:
    cases = []
    for layers, bias, batch_first, bidir in itertools.product((1, 2), *[(True, False)] * 3):
        common = dict(num_layers=layers, bias=bias, batch_first=batch_first, bidirectional=bidir)
        for proj in (0, P):
            cases.append(("lstm", dict(common, proj_size=proj)))
        cases.append(("gru", dict(common)))
        for act in ("tanh", "relu"):
            cases.append(("rnn", dict(common, nonlinearity=act)))
    return cases


GRID = _grid()
GRID_IDS = ["-".join([kind, *(f"{k}={v}" for k, v in kw.items())]) for kind, kw in GRID]


def make_pair(kind: str, dtype: torch.dtype = torch.float64, seed: int = 0, **kw):
    """(torch.nn module, ours) with ours holding a copy of torch's weights."""
    torch.manual_seed(seed)
    theirs = TORCH[kind](I, H, dtype=dtype, **kw)
    ours = OURS[kind](I, H, dtype=dtype, **kw)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def make_hx(module, batch: int | None, dtype: torch.dtype, seed: int = 1):
    """A random initial state in torch.nn's layout (batch=None: unbatched)."""
    g = torch.Generator().manual_seed(seed)
    rows = module.num_layers * (2 if module.bidirectional else 1)
    lead = (rows,) if batch is None else (rows, batch)
    out = module.proj_size if getattr(module, "proj_size", 0) else module.hidden_size
    h = 0.5 * torch.randn(*lead, out, generator=g, dtype=dtype)
    if isinstance(module, (nn.LSTM, LSTM)):
        return h, 0.5 * torch.randn(*lead, module.hidden_size, generator=g, dtype=dtype)
    return h


def leaves(hx) -> list[torch.Tensor]:
    if hx is None:
        return []
    return list(hx) if isinstance(hx, tuple) else [hx]


def run_with_grads(module, x, hx, seed: int = 3):
    """Outputs, final states and d(loss)/d(input, hx, parameters) of one forward/backward."""
    x = x.detach().clone().requires_grad_(True)
    hx_leaves = [t.detach().clone().requires_grad_(True) for t in leaves(hx)]
    if hx is None:
        hx_in = None
    elif isinstance(hx, tuple):
        hx_in = tuple(hx_leaves)
    else:
        hx_in = hx_leaves[0]
    out, final = module(x, hx_in)
    finals = leaves(final)
    g = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
    loss = loss + sum((f * torch.randn(f.shape, generator=g, dtype=f.dtype)).sum() for f in finals)
    params = list(module.parameters())
    grads = torch.autograd.grad(loss, [x, *hx_leaves, *params])
    return [out.detach(), *(f.detach() for f in finals)], list(grads)


def assert_same(module_a, module_b, x, hx, dtype) -> None:
    values_a, grads_a = run_with_grads(module_a, x, hx)
    values_b, grads_b = run_with_grads(module_b, x, hx)
    assert [v.shape for v in values_a] == [v.shape for v in values_b]
    for a, b in zip(values_a, values_b, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])


# ------------------------------------------------------------- the whole grid


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind,kw", GRID, ids=GRID_IDS)
def test_matches_torch_nn(kind, kw, dtype):
    theirs, ours = make_pair(kind, dtype, **kw)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [
        (n, p.shape) for n, p in theirs.named_parameters()
    ]
    g = torch.Generator().manual_seed(2)
    shape = (B, T, I) if kw["batch_first"] else (T, B, I)
    x = torch.randn(shape, generator=g, dtype=dtype)
    for hx in (None, make_hx(theirs, B, dtype)):
        assert_same(theirs, ours, x, hx, dtype)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_unbatched_input(kind):
    kw = dict(num_layers=2, bidirectional=True, batch_first=True)
    if kind == "lstm":
        kw["proj_size"] = P
    theirs, ours = make_pair(kind, **kw)
    x = torch.randn(T, I, dtype=torch.float64)
    for hx in (None, make_hx(theirs, None, torch.float64)):
        assert_same(theirs, ours, x, hx, torch.float64)
    out, _ = ours(x)
    assert out.shape == (T, 2 * (P if kind == "lstm" else H))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_batch_of_one_and_length_one(kind):
    theirs, ours = make_pair(kind, num_layers=2, bidirectional=True)
    for shape in ((1, 1, I), (T, 1, I), (1, B, I)):
        x = torch.randn(shape, dtype=torch.float64)
        assert_same(theirs, ours, x, make_hx(theirs, shape[1], torch.float64), torch.float64)


def test_empty_sequence_returns_the_initial_state():
    _, ours = make_pair("lstm", num_layers=2)
    hx = make_hx(ours, B, torch.float64)
    out, (h, c) = ours(torch.zeros(0, B, I, dtype=torch.float64), hx)
    assert out.shape == (0, B, H)
    assert torch.equal(h, hx[0]) and torch.equal(c, hx[1])


# -------------------------------------------------------------------- dropout


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_dropout(kind):
    theirs, ours = make_pair(kind, num_layers=3, dropout=0.5, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64)
    # eval mode: no dropout, same as torch
    theirs.eval()
    ours.eval()
    assert_same(theirs, ours, x, None, torch.float64)
    # training mode: random, different from eval, reproducible under a seed
    ours.train()
    y_eval = ours.eval()(x)[0]
    ours.train()
    torch.manual_seed(5)
    y1 = ours(x)[0]
    torch.manual_seed(5)
    y2 = ours(x)[0]
    y3 = ours(x)[0]
    assert torch.equal(y1, y2)
    assert not torch.allclose(y1, y3)
    assert not torch.allclose(y1, y_eval)
    # dropout=1 zeroes every input to the layers after the first: deterministic, so torch's
    # training-mode output can be matched exactly
    theirs, ours = make_pair(kind, num_layers=2, dropout=1.0)
    assert_same(theirs.train(), ours.train(), x, make_hx(theirs, B, torch.float64), torch.float64)


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="num_layers"):
        LSTM(I, H, dropout=0.2)


# ------------------------------------------------------- state_dict and init


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_state_dict_round_trip_and_init(kind):
    kw = dict(num_layers=2, bidirectional=True, **({"proj_size": P} if kind == "lstm" else {}))
    # the same seed gives the same weights as torch.nn: same names, order, shapes and init
    torch.manual_seed(11)
    theirs = TORCH[kind](I, H, **kw)
    torch.manual_seed(11)
    ours = OURS[kind](I, H, **kw)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for name, p in ours.state_dict().items():
        assert torch.equal(p, theirs.state_dict()[name]), name
        assert p.abs().max() <= H**-0.5
    # and back: torch loads ours
    ours.reset_parameters()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], **TOL[torch.float32])
    assert len(ours.all_weights) == 4 and len(ours.all_weights[0]) == len(theirs.all_weights[0])
    assert repr(ours) == repr(theirs)
    ours.flatten_parameters()  # exists, for code written against torch.nn


def test_device_and_dtype_arguments():
    ours = GRU(I, H, device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in ours.parameters())
    assert RNN(I, H, 1, "relu").nonlinearity == "relu"  # positional order as torch.nn


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_bad_input_raises_clear_errors(kind):
    _, ours = make_pair(kind, num_layers=2)
    x = torch.randn(T, B, I, dtype=torch.float64)
    hx = make_hx(ours, B, torch.float64)
    lengths = torch.tensor([T, T - 1, 2])
    bad = [
        (TypeError, "PackedSequence", lambda: ours(pack_padded_sequence(x, lengths))),
        (TypeError, "input must be a torch.Tensor", lambda: ours(x.tolist())),
        (ValueError, "input must be 3-D", lambda: ours(x[None])),
        (ValueError, "input must be 3-D", lambda: ours(x[0, 0])),
        (ValueError, "input_size=4", lambda: ours(x[..., :-1])),
        (TypeError, "input must be a floating", lambda: ours(x.long())),
        (TypeError, "input has dtype", lambda: ours(x.float())),
    ]
    if kind == "lstm":
        h, c = hx
        bad += [
            (TypeError, "hx must be a tuple", lambda: ours(x, h)),
            (TypeError, "hx must be a tuple", lambda: ours(x, (h, c, c))),
            (
                ValueError,
                r"hx\[0\] \(h_0\) must have shape \(2, 3, 5\)",
                lambda: ours(x, (h[:, :2], c)),
            ),
            (ValueError, r"hx\[1\] \(c_0\) must have shape", lambda: ours(x, (h, c[..., :-1]))),
            (ValueError, r"hx\[0\].*unbatched", lambda: ours(x[:, 0], (h, c))),
            (TypeError, r"hx\[1\] \(c_0\) has dtype", lambda: ours(x, (h, c.float()))),
            (TypeError, r"hx\[0\] \(h_0\) must be a torch.Tensor", lambda: ours(x, (None, c))),
        ]
    else:
        bad += [
            (ValueError, r"hx must have shape \(2, 3, 5\)", lambda: ours(x, hx[:, :2])),
            (ValueError, r"hx must have shape \(2, 3, 5\)", lambda: ours(x, hx[:1])),
            (ValueError, r"hx must have shape \(2, 5\).*unbatched", lambda: ours(x[:, 0], hx)),
            (ValueError, "hx must have shape", lambda: ours(x, hx[:, 0])),
            (TypeError, "hx has dtype", lambda: ours(x, hx.float())),
            (TypeError, "hx must be a torch.Tensor", lambda: ours(x, (hx,))),
        ]
    for err, message, call in bad:
        with pytest.raises(err, match=message):
            call()


def test_bad_constructor_arguments():
    bad = [
        (ValueError, "proj_size must be smaller", lambda: LSTM(I, H, proj_size=H)),
        (ValueError, "proj_size must be >= 0", lambda: LSTM(I, H, proj_size=-1)),
        (TypeError, "proj_size", lambda: GRU(I, H, proj_size=2)),
        (ValueError, "nonlinearity", lambda: RNN(I, H, nonlinearity="gelu")),
        (ValueError, "dropout", lambda: LSTM(I, H, num_layers=2, dropout=1.5)),
        (ValueError, "input_size must be greater", lambda: GRU(0, H)),
        (ValueError, "num_layers must be greater", lambda: GRU(I, H, num_layers=0)),
        (TypeError, "hidden_size must be an int", lambda: RNN(I, 5.0)),
        (TypeError, "batch_first must be a bool", lambda: LSTM(I, H, batch_first=1)),
    ]
    for err, message, call in bad:
        with pytest.raises(err, match=message):
            call()


# ------------------------------------------------------------------ the ops


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_cell_step_matches_torch_cells(kind):
    torch.manual_seed(0)
    if kind == "lstm":
        ref = nn.LSTMCell(I, H, dtype=torch.float64)
    elif kind == "gru":
        ref = nn.GRUCell(I, H, dtype=torch.float64)
    else:
        ref = nn.RNNCell(I, H, nonlinearity=kind[4:], dtype=torch.float64)
    w = CellWeights(ref.weight_ih, ref.weight_hh, ref.bias_ih, ref.bias_hh)
    x = torch.randn(B, I, dtype=torch.float64)
    h = torch.randn(B, H, dtype=torch.float64)
    state = (h, torch.randn(B, H, dtype=torch.float64)) if kind == "lstm" else h
    got, want = cell_step(kind, x, state, w), ref(x, state)
    for a, b in zip(leaves(got), leaves(want), strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


# ---------------------------------------------------------------- the mixers


@pytest.mark.parametrize("hidden", [None, 6])
@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
def test_mixer_matches_torch_nn(name, hidden):
    """The mixer with torch.nn's weights (and its own out_proj) computes torch.nn's function."""
    d = 8
    torch.manual_seed(0)
    layer = L.get(name, d_model=d, hidden_size=hidden).double()
    width = hidden or d
    ref = TORCH[name](d, width, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        for suffix in ("ih", "hh"):
            getattr(layer, f"weight_{suffix}").copy_(getattr(ref, f"weight_{suffix}_l0"))
            getattr(layer, f"bias_{suffix}").copy_(getattr(ref, f"bias_{suffix}_l0"))
    x = torch.randn(B, T, d, dtype=torch.float64)
    state = L.get(name, d_model=d, hidden_size=hidden).double().init_state(B)
    state = tuple(torch.randn_like(s) for s in leaves(state))
    state = state if name == "lstm" else state[0]
    y, final = layer(x, state)
    hx = tuple(s[None] for s in state) if name == "lstm" else state[None]
    y_ref, final_ref = ref(x, hx)
    if layer.out_proj is not None:
        y_ref = layer.out_proj(y_ref)
    assert y.shape == (B, T, d)
    torch.testing.assert_close(y, y_ref, **TOL[torch.float64])
    for a, b in zip(leaves(final), leaves(final_ref), strict=True):
        torch.testing.assert_close(a, b[0], **TOL[torch.float64])


def test_mixers_registry_entries():
    expected = {"lstm": ("Hochreiter", 2), "gru": ("Cho", 1), "rnn": ("Elman", 1)}
    for name, (author, factor) in expected.items():
        entry = L.info(name)
        assert entry.family == "nonlinear" and author in entry.paper
        assert entry.modes == ("recurrent",)
        layer = L.get(name, d_model=16)
        assert layer.out_proj is None
        assert layer.state_size == factor * 16 == eval(entry.state_size, {"d": 16})
        assert L.get(name, d_model=16, hidden_size=4).state_size == factor * 4
    with pytest.raises(ValueError, match="hidden_size"):
        L.get("gru", d_model=8, hidden_size=0)


def test_mixer_heads_shapes_and_checks():
    """n_heads > 1: one (G*d, d) recurrent block per head; n_heads must divide hidden_size."""
    for name, gates in (("lstm", 4), ("gru", 3), ("rnn", 1)):
        layer = L.get(name, d_model=12, n_heads=3)
        assert layer.weight_hh.shape == (3, gates * 4, 4)
        assert layer.weight_ih.shape == (gates * 12, 12)
        y, _ = layer(torch.randn(2, 5, 12))
        assert y.shape == (2, 5, 12)
        with pytest.raises(ValueError, match="n_heads"):
            L.get(name, d_model=12, n_heads=5)
        with pytest.raises(ValueError, match="n_heads"):
            L.get(name, d_model=12, n_heads=0)
