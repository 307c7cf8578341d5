"""TensorBoard event files of a run: DIR/tensorboard/, written when ``[log] tensorboard``.

Each metrics record the trainer logs (the lines of metrics.jsonl) becomes scalars at its
step: ``loss`` as ``train/loss``, ``lr`` as ``train/lr``, ``tokens_per_s`` as
``train/tokens_per_s``, ``val_loss`` as ``val/loss``, ``val_accuracy`` as ``val/accuracy``
and so on, so TensorBoard groups the training and validation curves. Only the run's writer
writes them: the trainer asks ``open_event_log`` for a log and passes ``enabled=False``
in a process that is not the writer, which then gets a log that writes nothing.

The writer is PyTorch's own ``torch.utils.tensorboard.SummaryWriter``; it needs the
``tensorboard`` package (``pip install tensorboard``, or ``statewise[tensorboard]``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

from statewise.errors import ConfigError
from statewise.train.checkpoint import TENSORBOARD
from statewise.train.config import LogConfig

INSTALL = "pip install tensorboard"


class EventLog(Protocol):
    """Where the trainer sends each metrics record it logs, besides metrics.jsonl."""

    def record(self, record: dict[str, Any]) -> None:
        """Log the numbers of ``record`` at its ``step``."""

    def close(self) -> None:
        """Flush and close; called once when the run ends or stops."""


def tag(key: str) -> str:
    """The TensorBoard tag of metrics key ``key``: ``val_loss`` -> ``val/loss``, ``loss``
    -> ``train/loss`` (one section per split, so TensorBoard groups each split's curves)."""
    if key.startswith("val_"):
        return "val/" + key[len("val_") :]
    return "train/" + key


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of ``record`` by tag, ``step`` left out (it is the x axis)."""
    out = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[tag(key)] = float(value)
    return out


def summary_writer_class() -> type:
    """torch.utils.tensorboard.SummaryWriter; ConfigError naming the install command when
    the ``tensorboard`` package is missing (torch's module imports it)."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            f"log.tensorboard = true needs the tensorboard package: {INSTALL} "
            "(or pip install 'statewise[tensorboard]'), or set log.tensorboard = false"
        ) from None
    return SummaryWriter


class TensorBoardLog:
    """Scalars of each record into event files under ``directory``."""

    def __init__(self, directory: Path, start: int) -> None:
        writer_class = summary_writer_class()
        # purge_step: TensorBoard hides the events of earlier files at steps after ``start``
        # (those a run killed after its last checkpoint wrote, and the resumed run writes
        # again); the steps up to ``start`` are the checkpoint's own and stay
        self.writer = writer_class(log_dir=str(directory), purge_step=start + 1)

    def record(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, global_step=step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class NoEventLog:
    """The log of a run without ``[log] tensorboard``, or of a process that is not its
    writer: writes nothing."""

    def record(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def check_available(config: LogConfig) -> None:
    """ConfigError before a run starts if ``config`` asks for what is not installed."""
    if config.tensorboard:
        summary_writer_class()


def open_event_log(out: Path, config: LogConfig, start: int, enabled: bool = True) -> EventLog:
    """The event log of run directory ``out`` for a run that continues after step ``start``
    (0: a new run); ``enabled=False`` (a process that is not the writer) logs nothing."""
    if not (enabled and config.tensorboard):
        return NoEventLog()
    return TensorBoardLog(Path(out) / TENSORBOARD, start)
