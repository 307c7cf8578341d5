"""A recurrence stepped over time with masks and time deltas: what the continuous-time cells
(CfC, LTC), whose update is nonlinear in the state, share.

    y_t, s_t = step(x_t, s_{t-1}, dt_t)          for t = 0 .. T-1
    s_t = s_{t-1}  where mask[:, t] is False     (padding carries the state through)

``dt`` (B, T) is the time since each token's predecessor, or None (the cell's default
spacing). Autograd differentiates through the loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from statewise.ops.tree import State, carry

Step = Callable[[torch.Tensor, State, torch.Tensor | None], tuple[torch.Tensor, State]]


def step_over_time(
    step: Step,
    x: torch.Tensor,
    state: State,
    mask: torch.Tensor | None,
    dt: torch.Tensor | None,
) -> tuple[torch.Tensor, State]:
    """(y (B, T, ...), final state) of ``step`` run over x (B, T, D) from ``state``."""
    outputs = []
    for t in range(x.shape[1]):
        y_t, new = step(x[:, t], state, None if dt is None else dt[:, t])
        state = new if mask is None else carry(mask[:, t], new, state)
        outputs.append(y_t)
    return torch.stack(outputs, dim=1), state
