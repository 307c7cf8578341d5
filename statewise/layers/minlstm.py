"""minLSTM (Feng et al. 2024, "Were RNNs All We Needed?").

    f_t = sigmoid(W_f x_t + b_f),  i_t = sigmoid(W_i x_t + b_i)      gates, (B, d_hidden)
    f'_t = f_t / (f_t + i_t),      i'_t = i_t / (f_t + i_t)          normalised, sum to 1
    h~_t = W_h x_t + b_h                                             candidate, no tanh
    h_t = f'_t * h_{t-1} + i'_t * h~_t                               diagonal linear in h
    y_t = W_o h_t                                                    only when d_hidden != D

The normalised gates are computed from log-sigmoids, without a division:
with d_t = log f_t - log i_t = softplus(-(W_i x_t + b_i)) - softplus(-(W_f x_t + b_f)),
f'_t = sigmoid(d_t) and i'_t = sigmoid(-d_t). The recurrence h_t = a_t h_{t-1} + b_t with
a_t = f'_t, b_t = i'_t h~_t runs through :func:`statewise.ops.scan.linear_recurrence` as a
loop over time ("recurrent") or a doubling scan ("scan"); both, the step, masking and the
output projection are shared with minGRU (:class:`statewise.layers.mingru.MinRNN`).

Negative eigenvalues (Grazzi et al. 2025, ``negative_eigenvalues=True``): a_t = 2 f'_t - 1
= (f_t - i_t) / (f_t + i_t) = tanh(d_t / 2) in (-1, 1); the input term i'_t h~_t is unchanged.

The paper's log-space parallel mode (for positive states, candidate g(W_h x)) is not
implemented; the plain cell needs no sign restriction in either mode.

auto mode is "recurrent", as for minGRU: measured on this machine (torch 2.13, fp32,
whole layer at d_model 512, B 8, forward + backward, single-thread CPU time because the
machine was shared) recurrent 106 ms vs scan 263 ms at T 256 and 439 ms vs 1.30 s at
T 1024; at B 1, d_model 64 the scan is slightly faster (11 vs 14 ms). See
docs/models/minlstm.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from statewise.layers.mingru import MinRNN
from statewise.layers.registry import register


@register(
    "minlstm",
    family="diagonal linear",
    paper="Feng et al. 2024, Were RNNs All We Needed?",
    state_size="d",
)
class MinLSTM(MinRNN):
    """minLSTM: an LSTM without the hidden state in its gates and with normalised gates.

    Args:
        d_model: input and output width D.
        expand: d_hidden = round(expand * d_model) when ``d_hidden`` is not given.
        d_hidden: width of the recurrent state; overrides ``expand``.
        negative_eigenvalues: use the transition 2 f'_t - 1 in (-1, 1) instead of f'_t in
            (0, 1) (Grazzi et al. 2025).
        mode: "auto" (= "recurrent"), "recurrent" or "scan".

    State: h, a tensor (B, d_hidden). Parameters: ``to_gate_hidden`` (a Linear D -> 3
    d_hidden with bias; its output rows are [forget gate; input gate; candidate]) and
    ``out_proj`` (Linear d_hidden -> D without bias, or None when d_hidden == D).
    """

    n_parts = 3

    def _gates(self, parts: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """a_t = f'_t (or 2 f'_t - 1) and b_t = i'_t * h~_t."""
        forget, input_, candidate = parts
        d = F.softplus(-input_) - F.softplus(-forget)  # log f_t - log i_t
        a = torch.tanh(0.5 * d) if self.negative_eigenvalues else torch.sigmoid(d)
        return a, torch.sigmoid(-d) * candidate
