"""Float64 references for the ``lstm``, ``gru`` and ``rnn`` mixers, written from the equations.

Plain loops over time with explicit sigmoid/tanh formulas; they read the layer's parameters
(weight_ih, weight_hh, bias_ih, bias_hh in torch.nn's gate order, and out_proj when
hidden_size != d_model) and call nothing in statewise.ops.

Head-wise variants (n_heads = K > 1, FlashRNN's block-diagonal recurrence): weight_hh is
(K, G*d, d) and head k's pre-activations, rows k*G*d .. (k+1)*G*d of the gate vector (gates
in torch.nn's order inside a head), are W_ih x + b_ih + W_hh[k] h[k] + b_hh; written out
head by head below. K = 1 is torch.nn's layout.
"""

from __future__ import annotations

import torch

from tests.reference.formulas import sigmoid
from tests.reference.registry import reference


def _tanh(a: torch.Tensor) -> torch.Tensor:
    return 2.0 * sigmoid(2.0 * a) - 1.0


def _affine(v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return v @ weight.T + bias


def _hidden(layer, h: torch.Tensor) -> torch.Tensor:
    """W_hh h + b_hh, the recurrent blocks written out head by head."""
    if layer.n_heads == 1:
        return _affine(h, layer.weight_hh, layer.bias_hh)
    d = layer.head_dim
    blocks = [h[:, k * d : (k + 1) * d] @ layer.weight_hh[k].T for k in range(layer.n_heads)]
    return torch.cat(blocks, dim=1) + layer.bias_hh


def _gate(layer, a: torch.Tensor, g: int, n_gates: int) -> torch.Tensor:
    """Gate g of pre-activations laid out (head, gate, unit): (B, H)."""
    d = layer.head_dim
    rows = [a[:, (k * n_gates + g) * d : (k * n_gates + g + 1) * d] for k in range(layer.n_heads)]
    return torch.cat(rows, dim=1)


def _output(layer, h: torch.Tensor) -> torch.Tensor:
    if layer.out_proj is None:
        return h
    return h @ layer.out_proj.weight.T + layer.out_proj.bias


# d_model of the harness is 8: hidden_size 6 and 5 put out_proj under test for lstm and gru
@reference("lstm", hidden_size=6)
@reference("lstm", variant="heads", n_heads=2)
def lstm(layer, x, state):
    h, c = state
    ys = []
    for t in range(x.shape[1]):
        a = _affine(x[:, t], layer.weight_ih, layer.bias_ih) + _hidden(layer, h)
        i = sigmoid(_gate(layer, a, 0, 4))
        f = sigmoid(_gate(layer, a, 1, 4))
        g = _tanh(_gate(layer, a, 2, 4))
        o = sigmoid(_gate(layer, a, 3, 4))
        c = f * c + i * g
        h = o * _tanh(c)
        ys.append(_output(layer, h))
    return torch.stack(ys, dim=1), (h, c)


@reference("gru", hidden_size=5)
@reference("gru", variant="heads", n_heads=3, hidden_size=6)
def gru(layer, x, state):
    h = state
    ys = []
    for t in range(x.shape[1]):
        a = _affine(x[:, t], layer.weight_ih, layer.bias_ih)
        b = _hidden(layer, h)
        r = sigmoid(_gate(layer, a, 0, 3) + _gate(layer, b, 0, 3))
        z = sigmoid(_gate(layer, a, 1, 3) + _gate(layer, b, 1, 3))
        n = _tanh(_gate(layer, a, 2, 3) + r * _gate(layer, b, 2, 3))
        h = (1.0 - z) * n + z * h
        ys.append(_output(layer, h))
    return torch.stack(ys, dim=1), h


@reference("rnn")
@reference("rnn", variant="heads", n_heads=4)
def rnn(layer, x, state):
    h = state
    ys = []
    for t in range(x.shape[1]):
        a = _affine(x[:, t], layer.weight_ih, layer.bias_ih)
        h = _tanh(a + _hidden(layer, h))
        ys.append(_output(layer, h))
    return torch.stack(ys, dim=1), h
