"""Float64 references for the ``lstm``, ``gru`` and ``rnn`` mixers, written from the equations.

Plain loops over time with explicit sigmoid/tanh formulas; they read the layer's parameters
(weight_ih, weight_hh, bias_ih, bias_hh in torch.nn's gate order, and out_proj when
hidden_size != d_model) and call nothing in statewise.ops.
"""

from __future__ import annotations

import torch

from tests.reference.formulas import sigmoid
from tests.reference.registry import reference


def _tanh(a: torch.Tensor) -> torch.Tensor:
    return 2.0 * sigmoid(2.0 * a) - 1.0


def _affine(v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return v @ weight.T + bias


def _output(layer, h: torch.Tensor) -> torch.Tensor:
    if layer.out_proj is None:
        return h
    return h @ layer.out_proj.weight.T + layer.out_proj.bias


# d_model of the harness is 8: hidden_size 6 and 5 put out_proj under test for lstm and gru
@reference("lstm", hidden_size=6)
def lstm(layer, x, state):
    h, c = state
    H = layer.hidden_size
    ys = []
    for t in range(x.shape[1]):
        a = _affine(x[:, t], layer.weight_ih, layer.bias_ih)
        a = a + _affine(h, layer.weight_hh, layer.bias_hh)
        i = sigmoid(a[:, 0:H])
        f = sigmoid(a[:, H : 2 * H])
        g = _tanh(a[:, 2 * H : 3 * H])
        o = sigmoid(a[:, 3 * H : 4 * H])
        c = f * c + i * g
        h = o * _tanh(c)
        ys.append(_output(layer, h))
    return torch.stack(ys, dim=1), (h, c)


@reference("gru", hidden_size=5)
def gru(layer, x, state):
    h = state
    H = layer.hidden_size
    ys = []
    for t in range(x.shape[1]):
        a = _affine(x[:, t], layer.weight_ih, layer.bias_ih)
        b = _affine(h, layer.weight_hh, layer.bias_hh)
        r = sigmoid(a[:, 0:H] + b[:, 0:H])
        z = sigmoid(a[:, H : 2 * H] + b[:, H : 2 * H])
        n = _tanh(a[:, 2 * H :] + r * b[:, 2 * H :])
        h = (1.0 - z) * n + z * h
        ys.append(_output(layer, h))
    return torch.stack(ys, dim=1), h


@reference("rnn")
def rnn(layer, x, state):
    h = state
    ys = []
    for t in range(x.shape[1]):
        a = _affine(x[:, t], layer.weight_ih, layer.bias_ih)
        h = _tanh(a + _affine(h, layer.weight_hh, layer.bias_hh))
        ys.append(_output(layer, h))
    return torch.stack(ys, dim=1), h
