"""Calendar features generated from timestamps: future-known covariates that need no data.

Each feature is a position within a cycle, encoded as the pair (sin 2 pi x / P, cos 2 pi x / P)
so that the end of a cycle meets its start:

    minute_of_hour  x = minute + second / 60,             P = 60     if the step < 1 hour
    hour_of_day     x = h = hour + minute / 60,           P = 24     if the step < 1 day
    day_of_week     x = weekday + h / 24 (Monday 0),      P = 7      if the step < 7 days
    day_of_year     x = day of year - 1 + h / 24,         P = 365.25 if the step < 28 days
    month_of_year   x = month - 1,                        P = 12     if 28 days <= step < 1 year

A feature is kept when the data's step is shorter than its cycle (a daily series has no
hour of day; the day of year needs a step under 28 days) and the month only when the step
is 28 days or longer (days are not resolved, but months are). Yearly data and integer
time indices get none. The step is measured on three consecutive timestamps of the
frequency (a month is 28-31 days).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from statewise.errors import ArgumentError

_DAY = 86400.0
_FEATURES = (  # name, kept for steps (seconds) in [shortest, longest)
    ("minute_of_hour", 0.0, 3600.0),
    ("hour_of_day", 0.0, _DAY),
    ("day_of_week", 0.0, 7 * _DAY),
    ("day_of_year", 0.0, 28 * _DAY),
    ("month_of_year", 28 * _DAY, 365 * _DAY),
)


def calendar_names(freq: Any) -> list[str]:
    """The calendar features of a datetime frequency (none for an integer step)."""
    if isinstance(freq, int):
        return []
    step = _step_seconds(freq)
    names = []
    for name, shortest, longest in _FEATURES:
        if shortest <= step < longest:
            names += [f"{name}_sin", f"{name}_cos"]
    return names


def calendar_features(ds: Any, names: list[str]) -> np.ndarray:
    """(len(ds), len(names)) float32 features of the timestamps ``ds`` (a DatetimeIndex)."""
    if not names:
        return np.zeros((len(ds), 0), dtype=np.float32)
    hour = ds.hour + ds.minute / 60
    positions = {
        "minute_of_hour": (ds.minute + ds.second / 60, 60.0),
        "hour_of_day": (hour, 24.0),
        "day_of_week": (ds.day_of_week + hour / 24, 7.0),
        "day_of_year": (ds.day_of_year - 1 + hour / 24, 365.25),
        "month_of_year": (ds.month - 1, 12.0),
    }
    columns = []
    for name in names:
        cycle, wave = name.rsplit("_", 1)
        x, period = positions[cycle]
        angle = 2 * math.pi * np.asarray(x, dtype=np.float64) / period
        columns.append(np.sin(angle) if wave == "sin" else np.cos(angle))
    return np.stack(columns, axis=1).astype(np.float32)


def season_of(freq: Any) -> int:
    """The usual seasonal period of a frequency: the steps in a day below a day, 7 for
    days (5 for business days), 52 for weeks, 12 for months, 4 for quarters, 1 for years."""
    if isinstance(freq, int):
        raise ArgumentError("season_length is needed: integer ds have no calendar season")
    step = _step_seconds(freq)
    if step < _DAY:
        return max(1, round(_DAY / step))
    if step < 7 * _DAY:
        return 5 if freq.freqstr.startswith(("B", "C")) else 7
    for longest, season in ((28 * _DAY, 52), (85 * _DAY, 12), (365 * _DAY, 4)):
        if step < longest:
            return season
    return 1


def _step_seconds(freq: Any) -> float:
    import pandas as pd

    stamps = pd.date_range("2001-01-01", periods=3, freq=freq)
    return float(np.mean((stamps[1:] - stamps[:-1]).total_seconds()))
