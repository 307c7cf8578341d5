"""Training: configs, the loop, checkpoints."""

from statewise.train.checkpoint import CheckpointError, load
from statewise.train.config import ConfigError, RunConfig, TrainConfig, load_config
from statewise.train.trainer import train

__all__ = [
    "CheckpointError",
    "ConfigError",
    "RunConfig",
    "TrainConfig",
    "load",
    "load_config",
    "train",
]
