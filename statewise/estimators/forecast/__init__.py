"""Forecasting for many series: the :class:`Forecaster` (numpy arrays or long-format
DataFrames), cross-validation over rolling origins and its evaluation."""

from statewise.estimators.forecast.forecaster import Forecaster
from statewise.estimators.forecast.metrics import evaluate_cv

__all__ = ["Forecaster", "evaluate_cv"]
