"""statewise: recurrent sequence learning in PyTorch.

import statewise
layer = statewise.layers.get("mingru", d_model=64)
model = statewise.LanguageModel(statewise.ModelConfig(layer="retnet", d_model=64))
model = statewise.load("runs/char_lm")        # a checkpoint directory
"""

from statewise import layers
from statewise.estimators import (
    Forecaster,
    NotFittedError,
    Recognizer,
    Seq2Seq,
    SequenceClassifier,
    SequenceTagger,
)
from statewise.infer import Engine
from statewise.models import (
    ClassifierHead,
    ForecastHead,
    LanguageModel,
    ModelConfig,
    build_model,
)
from statewise.train.checkpoint import load

__version__ = "0.1.0"

__all__ = [
    "ClassifierHead",
    "Engine",
    "ForecastHead",
    "Forecaster",
    "LanguageModel",
    "ModelConfig",
    "NotFittedError",
    "Recognizer",
    "Seq2Seq",
    "SequenceClassifier",
    "SequenceTagger",
    "build_model",
    "layers",
    "load",
]
