"""statewise.layers.bidirectional: both directions against each sequence run alone (forward
layer on it, backward layer on it reversed), against torch.nn.LSTM(bidirectional=True) with
copied weights, and the refusals of what a causal mixer would have."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from statewise import kernels, layers
from statewise.errors import ArgumentError, ArgumentTypeError
from statewise.layers.bidirectional import Bidirectional, reversal_index
from statewise.ops.tree import tree_map

F64 = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(autouse=True)
def pure_pytorch_layers():
    """The layers run their pure-PyTorch twins here: what is tested is the wiring of the
    two directions, and the kernels are tested against the twins in tests/kernels. With a
    cold numba cache this saves compiling the lstm, mingru and mamba kernels (~13 s)."""
    with kernels.use("torch"):
        yield


D = 8
LAYERS = {
    "lstm": {},
    "mingru": {},
    "mamba": dict(d_state=4, expand=1),
    "retnet": dict(n_heads=2),
}


def build(name: str, merge: str = "concat") -> Bidirectional:
    torch.manual_seed(0)
    return Bidirectional(name, merge=merge, d_model=D, **LAYERS[name]).double()


def draw(*shape, seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def alone(module: Bidirectional, x: torch.Tensor):
    """One unpadded sequence (1, n, D) by hand: the forward layer on it, the backward
    layer on it reversed in time, its output reversed back."""
    y_fwd, s_fwd = module.forward_layer(x)
    y_bwd, s_bwd = module.backward_layer(x.flip(1))
    return y_fwd, y_bwd.flip(1), s_fwd, s_bwd


def assert_states_close(got, expected) -> None:
    tree_map(lambda a, b: torch.testing.assert_close(a, b, **F64), got, expected)


def row(state, b: int):
    return tree_map(lambda t: t[b : b + 1], state)


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("padding", ["right", "left", "holes"])
def test_padded_batch_equals_each_sequence_alone(name, padding):
    module = build(name)
    lengths = [7, 4, 1]
    x = draw(3, 7, D, seed=1)
    if padding == "right":
        mask = torch.arange(7) < torch.tensor(lengths)[:, None]
    elif padding == "left":
        mask = torch.arange(7) >= 7 - torch.tensor(lengths)[:, None]
    else:  # real tokens anywhere: masked steps are skipped by both directions
        mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 1, 0, 1], [0, 0, 0, 1, 0, 0, 0]])
        mask = mask.bool()
    y, (s_fwd, s_bwd) = module(x, mask)
    assert y.shape == (3, 7, 2 * D)
    for b in range(3):
        y_fwd, y_bwd, e_fwd, e_bwd = alone(module, x[b : b + 1, mask[b]])
        torch.testing.assert_close(y[b : b + 1, mask[b], :D], y_fwd, **F64)
        torch.testing.assert_close(y[b : b + 1, mask[b], D:], y_bwd, **F64)
        assert_states_close(row(s_fwd, b), e_fwd)
        assert_states_close(row(s_bwd, b), e_bwd)


def _copy_lstm_weights(module: Bidirectional, reference: torch.nn.LSTM) -> None:
    """Our lstm names its weights as torch.nn.LSTMCell does; the reverse direction's are
    torch.nn.LSTM's ``*_l0_reverse``."""
    with torch.no_grad():
        for layer, suffix in (
            (module.forward_layer, "_l0"),
            (module.backward_layer, "_l0_reverse"),
        ):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(layer, name).copy_(getattr(reference, name + suffix))


@pytest.mark.parametrize("padded", [False, True])
def test_lstm_equals_torch_bidirectional_lstm_with_copied_weights(padded):
    module = build("lstm")
    reference = torch.nn.LSTM(D, D, batch_first=True, bidirectional=True).double()
    _copy_lstm_weights(module, reference)
    x = draw(3, 6, D, seed=2)
    lengths = torch.tensor([6, 3, 1] if padded else [6, 6, 6])
    mask = torch.arange(6) < lengths[:, None]
    y, ((h_fwd, c_fwd), (h_bwd, c_bwd)) = module(x, mask if padded else None)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, (h_n, c_n) = reference(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=6)
    torch.testing.assert_close(y[mask], out[mask], **F64)
    for ours, theirs in ((h_fwd, h_n[0]), (h_bwd, h_n[1]), (c_fwd, c_n[0]), (c_bwd, c_n[1])):
        torch.testing.assert_close(ours, theirs, **F64)


def test_sum_merge_adds_the_directions_and_gradients_reach_both():
    concat, summed = build("mingru"), build("mingru", merge="sum")
    summed.load_state_dict(concat.state_dict())
    x = draw(2, 5, D, seed=3).requires_grad_()
    y_cat, _ = concat(x)
    y_sum, _ = summed(x)
    assert y_sum.shape == (2, 5, D) and summed.d_out == D and concat.d_out == 2 * D
    torch.testing.assert_close(y_sum, y_cat[..., :D] + y_cat[..., D:], **F64)
    y_sum.square().sum().backward()
    for direction in (summed.forward_layer, summed.backward_layer):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in direction.parameters())
    assert x.grad.abs().sum() > 0


def test_a_name_builds_two_initialisations_an_instance_is_deep_copied():
    by_name = Bidirectional("mingru", d_model=D)
    first = next(by_name.forward_layer.parameters())
    assert not torch.equal(first, next(by_name.backward_layer.parameters()))
    layer = layers.get("mingru", d_model=D)
    copied = Bidirectional(layer)
    assert copied.forward_layer is layer
    for p, q in zip(layer.parameters(), copied.backward_layer.parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()


def test_reversal_index_mirrors_the_real_positions_of_each_row():
    g = torch.Generator().manual_seed(4)
    mask = torch.rand(50, 9, generator=g) < 0.6
    index = reversal_index(mask)
    for m, i in zip(mask.tolist(), index.tolist()):
        real = [t for t, flag in enumerate(m) if flag]
        expected = list(range(9))
        for a, b in zip(real, reversed(real)):
            expected[a] = b
        assert i == expected
    torch.testing.assert_close(index.gather(1, index), torch.arange(9).expand(50, 9))


def test_not_a_causal_mixer():
    module = build("lstm")
    for name in ("step", "init_state"):
        assert not hasattr(module, name)
        with pytest.raises(AttributeError, match="not a causal mixer"):
            getattr(module, name)
    assert module.causal is False
    assert "bidirectional" not in layers.names()
    with pytest.raises(ArgumentError, match="unknown layer"):
        layers.get("bidirectional", d_model=D)
    with pytest.raises(ArgumentTypeError, match="SequenceMixer"):
        Bidirectional(module)


@pytest.mark.parametrize(
    "build_it, error, words",
    [
        (lambda: Bidirectional("lstm", merge="mean", d_model=D), ArgumentError, "merge"),
        (lambda: Bidirectional("lstm"), ArgumentError, "d_model"),
        (lambda: Bidirectional("nope", d_model=D), ArgumentError, "unknown layer"),
        (lambda: Bidirectional(torch.nn.LSTM(D, D)), ArgumentTypeError, "layer_or_name"),
        (
            lambda: Bidirectional(layers.get("lstm", d_model=D), hidden_size=4),
            ArgumentError,
            "layer_kwargs",
        ),
    ],
)
def test_bad_construction_raises_clear_errors(build_it, error, words):
    with pytest.raises(error, match=words):
        build_it()


@pytest.mark.parametrize(
    "x, mask, error, words",
    [
        (torch.zeros(2, D), None, ArgumentError, "x must have shape"),
        ([[0.0]], None, ArgumentTypeError, "x"),
        (torch.zeros(2, 3, D), torch.ones(2, 3), ArgumentTypeError, "mask"),
        (torch.zeros(2, 3, D), torch.ones(2, 4, dtype=torch.bool), ArgumentError, "mask"),
        (torch.zeros(2, 3, D + 1), None, ArgumentError, "x has width"),
    ],
)
def test_bad_input_raises_clear_errors(x, mask, error, words):
    module = Bidirectional("lstm", d_model=D)
    with pytest.raises(error, match=words):
        module(x, mask)


def test_inputs_are_not_modified():
    module = build("lstm")
    x = draw(2, 5, D, seed=5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]]).bool()
    copies = x.clone(), mask.clone()
    module(x, mask)
    assert torch.equal(x, copies[0]) and torch.equal(mask, copies[1])
