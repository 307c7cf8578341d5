"""LTC, the liquid time-constant network (Hasani et al. 2021, "Liquid Time-constant
Networks", AAAI), as ncps's ``LTCCell`` on a fully connected wiring.

H neurons with potentials v (the state) and D sensory inputs. Synapses are sigmoids of the
presynaptic potential: g_ij(v) = w_ij sigmoid(sigma_ij (v_i - mu_ij)) with reversal
potential E_ij. Per step of duration dt (the contract's ``dt``, 1 when None), the ODE

    C_j dv_j/dt = g_leak_j (v_leak_j - v_j) + sum_i g_ij(v_i) (E_ij - v_j)
                  + sum_s g^s_sj(x_s) (E^s_sj - v_j),        x = x_t * w_in + b_in

is integrated by K semi-implicit Euler unfolds of dt / K each (the paper's fused solver):

    v <- (c v + g_leak v_leak + sum_i g_ij(v_i) E_ij + N_s)
         / (c + g_leak + sum_i g_ij(v_i) + D_s + eps),                c = C / (dt / K)

with N_s = sum_s g^s_sj(x_s) E^s_sj and D_s = sum_s g^s_sj(x_s) fixed over the unfolds.
The output is v * w_out + b_out (then W_o when H != d_model). A step with dt = 0 leaves v
unchanged (the limit c -> infinity); a masked step carries it.

Positivity: w, w^s, C and g_leak enter through softplus (ncps's
``implicit_param_constraints=True``), so no clipping after each optimiser step is needed.
The initial values follow ncps's ranges; E and E^s are +-1 (excitatory with probability
2/3, as ncps's FullyConnected wiring draws them). The cost per step is O(K H^2 + D H):
keep H small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from statewise.layers.checks import positive_int, positive_number
from statewise.layers.continuous_time import ContinuousTimeCell
from statewise.layers.registry import register

# ncps's initial ranges (uniform), by parameter
INIT_RANGES = {
    "gleak": (0.001, 1.0),
    "vleak": (-0.2, 0.2),
    "cm": (0.4, 0.6),
    "w": (0.001, 1.0),
    "sigma": (3.0, 8.0),
    "mu": (0.3, 0.8),
    "sensory_w": (0.001, 1.0),
    "sensory_sigma": (3.0, 8.0),
    "sensory_mu": (0.3, 0.8),
}


def synapses(
    v: torch.Tensor, w: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """g_ij = w_ij sigmoid(sigma_ij (v_i - mu_ij)): v (B, I), w, mu, sigma (I, J) -> (B, I, J)."""
    return w * torch.sigmoid(sigma * (v.unsqueeze(-1) - mu))


@register(
    "ltc",
    family="continuous-time",
    paper="Hasani et al. 2021, Liquid Time-constant Networks",
    state_size="d",
)
class LTC(ContinuousTimeCell):
    """LTC as a mixer; reads ``dt`` (time since the previous token, 1 when None).

    Args:
        d_model: input and output width D (the sensory inputs).
        hidden_size: neurons H (default D); W_o (H -> D) exists when H != D.
        ode_unfolds: K, solver steps per token (ncps's default 6).
        epsilon: added to the solver's denominator (ncps's 1e-8).
        mode: "auto" or "recurrent" (the only one).

    State: v (B, H).
    """

    def __init__(
        self,
        d_model: int,
        hidden_size: int | None = None,
        ode_unfolds: int = 6,
        epsilon: float = 1e-8,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        h = self.hidden_size = positive_int(
            "hidden_size", d_model if hidden_size is None else hidden_size
        )
        self.ode_unfolds = positive_int("ode_unfolds", ode_unfolds)
        self.epsilon = positive_number("epsilon", epsilon)
        shapes = {
            "gleak": (h,),
            "vleak": (h,),
            "cm": (h,),
            "w": (h, h),
            "sigma": (h, h),
            "mu": (h, h),
            "sensory_w": (d_model, h),
            "sensory_sigma": (d_model, h),
            "sensory_mu": (d_model, h),
        }
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape)))
        self.erev = nn.Parameter(torch.empty(h, h))
        self.sensory_erev = nn.Parameter(torch.empty(d_model, h))
        self.input_w = nn.Parameter(torch.ones(d_model))
        self.input_b = nn.Parameter(torch.zeros(d_model))
        self.output_w = nn.Parameter(torch.ones(h))
        self.output_b = nn.Parameter(torch.zeros(h))
        self.out_proj = nn.Linear(h, d_model) if h != d_model else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for name, (low, high) in INIT_RANGES.items():
            getattr(self, name).uniform_(low, high)
        for erev in (self.erev, self.sensory_erev):  # +1 with probability 2/3, else -1
            erev.copy_(torch.where(torch.rand_like(erev) < 2 / 3, 1.0, -1.0))
        self.input_w.fill_(1.0)
        self.input_b.zero_()
        self.output_w.fill_(1.0)
        self.output_b.zero_()
        if self.out_proj is not None:
            self.out_proj.reset_parameters()

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, hidden_size={self.hidden_size}, "
            f"ode_unfolds={self.ode_unfolds}"
        )

    def _cell(
        self, x_t: torch.Tensor, v: torch.Tensor, dt: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = x_t * self.input_w + self.input_b
        sensory = synapses(x, F.softplus(self.sensory_w), self.sensory_mu, self.sensory_sigma)
        numerator_s = (sensory * self.sensory_erev).sum(dim=1)
        denominator_s = sensory.sum(dim=1)
        if dt is None:
            steps = 1.0
        else:  # dt = 0 leaves v as it was (below); 1 keeps that branch finite
            steps = torch.where(dt > 0, dt, torch.ones_like(dt)).unsqueeze(-1)
        c = F.softplus(self.cm) / (steps / self.ode_unfolds)
        w, gleak = F.softplus(self.w), F.softplus(self.gleak)
        new = v
        for _ in range(self.ode_unfolds):
            g = synapses(new, w, self.mu, self.sigma)
            numerator = c * new + gleak * self.vleak + (g * self.erev).sum(dim=1) + numerator_s
            denominator = c + gleak + g.sum(dim=1) + denominator_s + self.epsilon
            new = numerator / denominator
        if dt is not None:
            new = torch.where((dt > 0).unsqueeze(-1), new, v)
        y = new * self.output_w + self.output_b
        return (y if self.out_proj is None else self.out_proj(y)), new
