"""The DataFrame side of the Forecaster: what it keeps of the frame it was fitted on, and how
long frames become panels of scaled series.

Columns of a series' rows: y, then the past-only covariates (``hist_exog_list``), then the
future-known ones (``futr_exog_list``). Each is scaled per series by the Forecaster's
scaler with statistics from that series' training rows (NaN left out); a series first met
at predict time gets statistics from the history it comes with. Future-known inputs are the
scaled user columns followed by the calendar features of the timestamps
(calendar.py). Covariates at grid timestamps the frame did not hold are 0 after
scaling (the series' centre), and y there is missing. Static features (``stat_exog_list``,
from ``static_df``) are standardised over the training series.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from statewise.errors import DataError
from statewise.estimators.forecast.calendar import calendar_features, calendar_names
from statewise.estimators.forecast.frame import (
    Gridded,
    Y,
    check_ds_kind,
    check_frame,
    freq_from_json,
    freq_to_json,
    future_rows,
    import_pandas,
    python_scalars,
    resolve_freq,
    static_rows,
    timestamps,
    to_grid,
)
from statewise.estimators.forecast.panel import Panel, make_panel
from statewise.tasks.forecast import series_statistics


@dataclass
class FrameData:
    """freq; covariate and calendar column names; the training series' ids, (shift, scale)
    (S, C) float64 of their columns, static features (S, F_s) with their standardisation;
    and ``tail``, the last input_len rows of every series (what predict() continues)."""

    freq: Any
    hist_exog: list[str]
    futr_exog: list[str]
    stat_exog: list[str]
    calendar: list[str]
    scaler: str | None
    ids: np.ndarray
    shift: torch.Tensor
    scale: torch.Tensor
    static: torch.Tensor
    static_shift: torch.Tensor
    static_scale: torch.Tensor
    tail: Gridded

    @property
    def columns(self) -> list[str]:
        return [Y, *self.hist_exog, *self.futr_exog]

    def grid(self, df: Any, name: str) -> Gridded:
        """``df`` checked and on the fitted frequency's grid."""
        check_frame(df, name, self.columns, nan_allowed=(Y,))
        check_ds_kind(df, name, self.freq)
        return to_grid(df, self.freq, self.columns)

    def panel(
        self,
        gridded: Gridded,
        input_len: int,
        static_df: Any = None,
        futr_df: Any = None,
        future_steps: int = 0,
        h: int = 0,
    ) -> Panel:
        """The panel of ``gridded``; with ``future_steps`` > 0, that many rows after each
        series' end carry the future-known inputs (user columns from ``futr_df`` for the
        first ``h`` of them, 0 after)."""
        known = {uid: i for i, uid in enumerate(self.ids.tolist())}
        index = [known.get(uid) for uid in gridded.ids.tolist()]
        shift, scale = self._statistics(gridded, index)
        futures = [np.zeros((future_steps, len(self.futr_exog)))] * len(index)
        if self.futr_exog and h:
            given = future_rows(futr_df, gridded, h, self.freq, self.futr_exog)
            futures = [np.pad(f, ((0, future_steps - h), (0, 0))) for f in given]
        n_hist = len(self.hist_exog)
        hist, futr = [], []
        for i, rows in enumerate(gridded.rows):
            covariates = np.concatenate([rows[:, 1:], np.pad(futures[i], ((0, 0), (n_hist, 0)))])
            scaled = (covariates - shift[i, 1:].numpy()) / scale[i, 1:].numpy()
            scaled = np.nan_to_num(scaled, nan=0.0)  # rows the frame did not hold
            stamps = timestamps(gridded.starts[i], len(scaled), self.freq)
            calendar = calendar_features(stamps, self.calendar)
            hist.append(scaled[: len(rows), :n_hist])
            futr.append(np.concatenate([scaled[:, n_hist:], calendar], axis=1))
        return make_panel(
            [rows[:, :1] for rows in gridded.rows],
            shift[:, :1],
            scale[:, :1],
            hist,
            futr,
            self._static(gridded.ids, index, static_df),
            torch.tensor([0 if i is None else i for i in index]),
            input_len,
        )

    def _statistics(self, gridded: Gridded, index: list[int | None]):
        shift = torch.empty(len(index), len(self.columns), dtype=torch.float64)
        scale = torch.empty_like(shift)
        for i, known in enumerate(index):
            if known is not None:
                shift[i], scale[i] = self.shift[known], self.scale[known]
            else:
                rows = torch.from_numpy(gridded.rows[i])
                shift[i], scale[i] = fitted_statistics(rows, self.scaler, gridded.ids[i])
        return shift, scale

    def _static(self, ids: np.ndarray, index: list[int | None], static_df: Any) -> torch.Tensor:
        if not self.stat_exog:
            return torch.zeros(len(ids), 0)
        if static_df is not None:
            values = torch.from_numpy(static_rows(static_df, ids, self.stat_exog))
        elif any(i is None for i in index):
            unknown = [uid for uid, i in zip(ids.tolist(), index) if i is None]
            raise DataError(
                f"static_df is required for series the model was not fitted on: {unknown[:5]}"
            )
        else:
            values = self.static[index]
        return (values - self.static_shift) / self.static_scale

    # ---- persistence -----------------------------------------------------------------

    def saved(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON-able metadata, tensors) of this FrameData."""
        lengths = self.tail.lengths()
        width = max(lengths)
        tail = torch.full(
            (len(lengths), width, len(self.columns)), float("nan"), dtype=torch.float64
        )
        for i, rows in enumerate(self.tail.rows):
            tail[i, : len(rows)] = torch.from_numpy(rows)
        meta = {
            "freq": freq_to_json(self.freq),
            "hist_exog": self.hist_exog,
            "futr_exog": self.futr_exog,
            "stat_exog": self.stat_exog,
            "calendar": self.calendar,
            "scaler": self.scaler,
            "ids": self.ids.tolist(),
            "tail_starts": [
                s if isinstance(s, int) else str(s) for s in python_scalars(self.tail.starts)
            ],
        }
        tensors = {
            "shift": self.shift,
            "scale": self.scale,
            "static": self.static,
            "static_shift": self.static_shift,
            "static_scale": self.static_scale,
            "tail": tail,
            "tail_lengths": torch.tensor(lengths),
        }
        return meta, tensors

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> FrameData:
        freq = freq_from_json(meta["freq"])
        starts = meta["tail_starts"]
        if not isinstance(freq, int):
            starts = [_timestamp(s) for s in starts]
        rows = [t[:n].numpy() for t, n in zip(tensors["tail"], tensors["tail_lengths"].tolist())]
        ids = np.asarray(meta["ids"], dtype=object if isinstance(meta["ids"][0], str) else None)
        return cls(
            freq=freq,
            hist_exog=list(meta["hist_exog"]),
            futr_exog=list(meta["futr_exog"]),
            stat_exog=list(meta["stat_exog"]),
            calendar=list(meta["calendar"]),
            scaler=meta["scaler"],
            ids=ids,
            shift=tensors["shift"],
            scale=tensors["scale"],
            static=tensors["static"],
            static_shift=tensors["static_shift"],
            static_scale=tensors["static_scale"],
            tail=Gridded(ids, starts, rows),
        )


def fitted_statistics(rows: torch.Tensor, scaler: str | None, series: Any):
    """(shift, scale) of a series' rows (n, C); an error if y has no observed value."""
    if bool(torch.isnan(rows[:, 0]).all()):
        raise DataError(f"series {series!r} has no observed y to scale it by")
    return series_statistics(rows, scaler)


def fit_frame(
    df: Any, static_df: Any, options: dict[str, Any], val_size: int
) -> tuple[FrameData, Gridded]:
    """The FrameData of a training frame (statistics from all but the last ``val_size``
    rows of each series) and the frame on its grid."""
    columns = [Y, *options["hist_exog_list"], *options["futr_exog_list"]]
    check_frame(df, "train", columns, nan_allowed=(Y,))
    freq = resolve_freq(df, options["freq"])
    gridded = to_grid(df, freq, columns)
    stats = [
        fitted_statistics(
            torch.from_numpy(rows[: max(0, len(rows) - val_size)]), options["scaler"], uid
        )
        for uid, rows in zip(gridded.ids.tolist(), gridded.rows)
    ]
    stat_exog = list(options["stat_exog_list"])
    if stat_exog and static_df is None:
        raise DataError(f"static_df is required: stat_exog_list is {stat_exog}")
    static = torch.from_numpy(static_rows(static_df, gridded.ids, stat_exog)) if stat_exog else None
    static = torch.zeros(len(gridded.ids), 0, dtype=torch.float64) if static is None else static
    static_shift, static_scale = series_statistics(static, "standard")
    data = FrameData(
        freq=freq,
        hist_exog=list(options["hist_exog_list"]),
        futr_exog=list(options["futr_exog_list"]),
        stat_exog=stat_exog,
        calendar=calendar_names(freq) if options["calendar"] else [],
        scaler=options["scaler"],
        ids=gridded.ids,
        shift=torch.stack([s for s, _ in stats]),
        scale=torch.stack([s for _, s in stats]),
        static=static,
        static_shift=static_shift,
        static_scale=static_scale,
        tail=last_rows(gridded, options["input_len"], freq),
    )
    return data, gridded


def last_rows(gridded: Gridded, count: int, freq: Any) -> Gridded:
    """The last ``count`` rows of every series (all of a shorter one)."""
    starts, rows = [], []
    for start, r in zip(gridded.starts, gridded.rows):
        skip = max(0, len(r) - count)
        starts.append(timestamps(start, 1, freq, skip)[0])
        rows.append(r[skip:])
    return Gridded(gridded.ids, starts, rows)


def _timestamp(text: str) -> Any:
    return import_pandas().Timestamp(text)
