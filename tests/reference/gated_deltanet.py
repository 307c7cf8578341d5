"""Float64 reference recurrence of Gated DeltaNet, from the equations: DeltaNet's loop
(tests.reference.deltanet) with the decay alpha_h = exp(-exp(A_log_h) softplus(w_alpha,h . x
+ dt_bias_h)) applied to the state before each delta-rule update,
S_h = alpha_h (I - beta k k^T) S_h + beta k v^T."""

from __future__ import annotations

import torch

from tests.reference.deltanet import run_delta_layer
from tests.reference.registry import reference


@reference("gated_deltanet", n_heads=2, chunk_size=4)
# dt large enough that alpha takes values well below 1, beta in (0, 2), no conv
@reference(
    "gated_deltanet",
    variant="negative",
    n_heads=2,
    expand_v=1.0,
    use_short_conv=False,
    negative_eigenvalues=True,
    dt_min=0.1,
    dt_max=1.0,
    A_init_range=(0.5, 4.0),
    chunk_size=5,
)
def run(layer, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    def decay(x_t: torch.Tensor) -> torch.Tensor:
        softplus = torch.log1p(torch.exp(x_t @ layer.a_proj.weight.T + layer.dt_bias))
        return torch.exp(-torch.exp(layer.A_log) * softplus)

    return run_delta_layer(layer, x, state, decay)
