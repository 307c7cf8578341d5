"""What the continuous-time cells (CfC, LTC) share: one mode, the loop over time, of a cell
``_cell(x_t, h, dt) -> (y_t, h)`` that reads the time since the previous token (``dt``, 1
when None), with a state h (B, hidden_size) and masked steps carrying it."""

from __future__ import annotations

import torch

from statewise.layers.base import SequenceMixer
from statewise.ops.precision import float32_recurrence
from statewise.ops.time_loop import step_over_time


class ContinuousTimeCell(SequenceMixer):
    """Base of the cells; subclasses set ``hidden_size`` and implement ``_cell``."""

    modes = ("recurrent",)
    uses_dt = True
    hidden_size: int

    def auto_mode(self, seq_len: int) -> str:
        return "recurrent"

    def _cell(
        self, x_t: torch.Tensor, h: torch.Tensor, dt: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @float32_recurrence
    def _forward(
        self,
        x: torch.Tensor,
        state: torch.Tensor,
        mask: torch.Tensor | None,
        mode: str,
        dt: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1] == 0:
            return x.new_zeros(x.shape), state
        return step_over_time(self._cell, x, state, mask, dt)

    @float32_recurrence
    def _step(
        self, x_t: torch.Tensor, state: torch.Tensor, dt: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._cell(x_t, state, dt)

    def _init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        return torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
