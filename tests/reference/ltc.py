"""Float64 reference of LTC (Hasani et al. 2021), a plain loop over time and over the
solver's unfolds, written from the paper's fused semi-implicit Euler step (ncps's LTCCell,
fully connected wiring, softplus-constrained parameters)."""

from __future__ import annotations

import torch

from tests.reference.formulas import linear, sigmoid
from tests.reference.registry import reference


def softplus(v: torch.Tensor) -> torch.Tensor:
    return torch.log1p(torch.exp(v))


@reference("ltc", hidden_size=5, ode_unfolds=3)
@reference("ltc", variant="square", ode_unfolds=2)
def run(layer, x: torch.Tensor, state: torch.Tensor, dt: torch.Tensor | None = None):
    """Per t: x' = x_t w_in + b_in; sensory synapses g^s_sj = softplus(w^s_sj)
    sigmoid(sigma^s_sj (x'_s - mu^s_sj)); then K times, with c = softplus(C) K / dt and
    g_ij = softplus(w_ij) sigmoid(sigma_ij (v_i - mu_ij)):
    v_j <- (c v_j + gl_j vl_j + sum_i g_ij E_ij + sum_s g^s_sj E^s_sj)
           / (c + gl_j + sum_i g_ij + sum_s g^s_sj + eps);
    dt = 0 keeps v; y = v w_out + b_out (then W_o when hidden_size != d_model)."""
    v, ys = state, []
    batch, hidden = state.shape
    gleak = softplus(layer.gleak)
    for t in range(x.shape[1]):
        xin = x[:, t] * layer.input_w + layer.input_b
        num_s = torch.zeros(batch, hidden, dtype=x.dtype)
        den_s = torch.zeros(batch, hidden, dtype=x.dtype)
        for s in range(x.shape[2]):
            g = softplus(layer.sensory_w[s]) * sigmoid(
                layer.sensory_sigma[s] * (xin[:, s : s + 1] - layer.sensory_mu[s])
            )
            num_s = num_s + g * layer.sensory_erev[s]
            den_s = den_s + g
        # dt = 0 keeps v (the limit of c -> infinity); such rows step by 1 and are put back
        moving = None if dt is None else dt[:, t : t + 1] > 0
        step = 1.0 if dt is None else torch.where(moving, dt[:, t : t + 1], 1.0)
        c = softplus(layer.cm) * layer.ode_unfolds / step
        new = v
        for _ in range(layer.ode_unfolds):
            num = c * new + gleak * layer.vleak + num_s
            den = c + gleak + den_s + layer.epsilon
            for i in range(hidden):
                g = softplus(layer.w[i]) * sigmoid(
                    layer.sigma[i] * (new[:, i : i + 1] - layer.mu[i])
                )
                num = num + g * layer.erev[i]
                den = den + g
            new = num / den
        if moving is not None:
            new = torch.where(moving, new, v)
        v = new
        y = v * layer.output_w + layer.output_b
        ys.append(y if layer.out_proj is None else linear(layer.out_proj, y))
    return torch.stack(ys, dim=1), v
