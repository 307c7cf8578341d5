"""Many series on one padded time axis, and the windows cut from them (never across series).

Series s has n_s rows on its regular time grid (its history: y may be missing, NaN) and
possibly more rows after them that hold only future-known covariates (for a forecast past
its end). Row r sits at position L + r (L = input_len), so every window has L positions of
context even at the series' start; positions before row 0 are padding.

A window (s, c) is the forecast made after the first c rows of series s: its context is
rows c - L .. c - 1 (positions c .. c + L - 1), its targets rows c .. c + H - 1 (positions
L + c .. L + c + H - 1). Inside the context:

    y         the target scaled by the series' (shift, scale), 0 where not observed or
              before the series' start (missing values are never imputed otherwise)
    observed  True where y was observed
    mask      False before the series' first row (the block stack skips those steps:
              a padded batch gives each window what it gets alone), None if no window of
              the batch has padding
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from statewise.models.forecast.inputs import ForecastInputs


@dataclass
class Panel:
    """y, observed (S, T, K); real (S, T); hist (S, T, F_h) past-only covariates; futr
    (S, T, F_f) future-known covariates (scaled, with calendar features); static (S, F_s);
    series (S,) embedding indices; shift, scale (S, K) float64, data = scale * y + shift;
    lengths (S,) rows of history."""

    y: torch.Tensor
    observed: torch.Tensor
    real: torch.Tensor
    hist: torch.Tensor
    futr: torch.Tensor
    static: torch.Tensor
    series: torch.Tensor
    shift: torch.Tensor
    scale: torch.Tensor
    lengths: torch.Tensor
    input_len: int

    def inputs(self, s: torch.Tensor, c: torch.Tensor, horizon: int) -> ForecastInputs:
        """The network inputs of windows (s, c) (see the module doc)."""
        rows = s[:, None]
        context = c[:, None] + torch.arange(self.input_len)
        ahead = self.input_len + c[:, None] + torch.arange(horizon)
        real = self.real[rows, context]
        return ForecastInputs(
            y=self.y[rows, context],
            observed=self.observed[rows, context],
            extra=torch.cat([self.hist[rows, context], self.futr[rows, context]], dim=-1),
            future=self.futr[rows, ahead],
            series=self.series[s],
            static=self.static[s],
            mask=None if bool(real.all()) else real,
        )

    def targets(
        self, s: torch.Tensor, c: torch.Tensor, horizon: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, observed) of the target rows of windows (s, c): (B, horizon, K) each."""
        ahead = self.input_len + c[:, None] + torch.arange(horizon)
        return self.y[s[:, None], ahead], self.observed[s[:, None], ahead]

    def windows(
        self, first: torch.Tensor, last: torch.Tensor, horizon: int, need_target: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every window (s, c) with first[s] <= c <= last[s], as index tensors (W,) each;
        with ``need_target``, only those with at least one observed target row."""
        count = (last - first + 1).clamp_min(0)
        s = torch.repeat_interleave(torch.arange(len(count)), count)
        starts = torch.cumsum(count, 0) - count
        c = first[s] + torch.arange(len(s)) - starts[s]
        if need_target and len(s):
            seen = self.observed.any(-1).long().cumsum(1)  # (S, T)
            end = self.input_len + c + horizon - 1
            keep = seen[s, end] - seen[s, end - horizon] > 0
            s, c = s[keep], c[keep]
        return s, c


def make_panel(
    values: list[np.ndarray],
    shift: torch.Tensor,
    scale: torch.Tensor,
    hist: list[np.ndarray],
    futr: list[np.ndarray],
    static: torch.Tensor,
    series: torch.Tensor,
    input_len: int,
) -> Panel:
    """A panel from per-series arrays: values[s] (n_s, K) in the data's units with NaN for
    missing; hist[s] (n_s, F_h) and futr[s] (m_s >= n_s, F_f) already scaled; shift, scale
    (S, K) the series' statistics."""
    lengths = [len(v) for v in values]
    total = input_len + max(max(len(f) for f in futr), max(lengths))
    k = values[0].shape[1]
    raw = torch.full((len(values), total, k), float("nan"), dtype=torch.float64)
    real = torch.zeros(len(values), total, dtype=torch.bool)
    hist_t = torch.zeros(len(values), total, hist[0].shape[1])
    futr_t = torch.zeros(len(values), total, futr[0].shape[1])
    for i, (v, h, f) in enumerate(zip(values, hist, futr)):
        raw[i, input_len : input_len + len(v)] = torch.as_tensor(v, dtype=torch.float64)
        real[i, input_len : input_len + len(v)] = True
        hist_t[i, input_len : input_len + len(h)] = torch.as_tensor(h, dtype=torch.float32)
        futr_t[i, input_len : input_len + len(f)] = torch.as_tensor(f, dtype=torch.float32)
    observed = ~torch.isnan(raw)
    scaled = ((raw - shift[:, None]) / scale[:, None]).nan_to_num(0.0).float()
    return Panel(
        y=scaled,
        observed=observed,
        real=real,
        hist=hist_t,
        futr=futr_t,
        static=static.float(),
        series=series,
        shift=shift,
        scale=scale,
        lengths=torch.tensor(lengths),
        input_len=input_len,
    )
