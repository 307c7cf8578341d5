"""fit / predict estimators for people who do not build models, sharing one fitting loop
(:mod:`statewise.estimators.fit`): :class:`Forecaster` and :class:`SequenceClassifier`."""

from statewise.estimators.classify import SequenceClassifier
from statewise.estimators.fit import NotFittedError
from statewise.estimators.forecast import Forecaster

__all__ = ["Forecaster", "NotFittedError", "SequenceClassifier"]
