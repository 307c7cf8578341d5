"""fit / predict estimators for people who do not build models, sharing one fitting loop
(:mod:`statewise.estimators.fit`): :class:`Forecaster`, :class:`SequenceClassifier`,
:class:`Seq2Seq`, :class:`Recognizer`, :class:`SequenceTagger`."""

from statewise.estimators.classify import SequenceClassifier
from statewise.estimators.fit import NotFittedError
from statewise.estimators.forecast.forecaster import Forecaster
from statewise.estimators.recognize import Recognizer
from statewise.estimators.seq2seq import Seq2Seq
from statewise.estimators.tag import SequenceTagger

__all__ = [
    "Forecaster",
    "NotFittedError",
    "Recognizer",
    "Seq2Seq",
    "SequenceClassifier",
    "SequenceTagger",
]
