"""Float64 reference recurrence of ParaLSTM, a plain loop written from the paper's equations."""

from __future__ import annotations

import torch

from tests.reference.formulas import linear, sigmoid
from tests.reference.registry import reference


@reference("paralstm")
@reference("paralstm", variant="clip", jacobian_clip=0.5)
def run(layer, x: torch.Tensor, state):
    """Coupled-gate LSTM with diagonal recurrent weights (a_f, a_c, a_o) and peepholes
    (p_f, p_o); (g_f, g_c, g_o) = W x_t + b:
    f = sigmoid(a_f h + p_f c + g_f), c~ = tanh(a_c h + g_c), c_t = f c + (1 - f) c~,
    o = sigmoid(a_o h + p_o c_t + g_o), h_t = o tanh(c_t). State (h, c).
    """
    n_hidden = layer.d_hidden
    a_f, a_c, a_o = layer.recurrent
    p_f, p_o = layer.peephole
    h, c = state
    ys = []
    for t in range(x.shape[1]):
        g = linear(layer.in_proj, x[:, t])
        g_f, g_c, g_o = g[:, :n_hidden], g[:, n_hidden : 2 * n_hidden], g[:, 2 * n_hidden :]
        f = sigmoid(a_f * h + p_f * c + g_f)
        c_tilde = torch.tanh(a_c * h + g_c)
        c = f * c + (1.0 - f) * c_tilde
        o = sigmoid(a_o * h + p_o * c + g_o)
        h = o * torch.tanh(c)
        ys.append(h @ layer.out_proj.weight.T if layer.out_proj is not None else h)
    return torch.stack(ys, dim=1), (h, c)
