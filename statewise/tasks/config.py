"""DataConfig and the factory that turns it into a task."""

from __future__ import annotations

from dataclasses import dataclass

from statewise.tasks.base import Task
from statewise.tasks.mqar import MQAR
from statewise.tasks.text import CharLM, builtin_corpus, read_text

TASKS = ("char_lm", "mqar")


@dataclass
class DataConfig:
    """task: "char_lm" (bytes of a text file) or "mqar" (synthetic associative recall).

    path: char_lm's text file; empty means the built-in corpus (the standard library's source).
    vocab_size, n_pairs, alpha: mqar's vocabulary, key-value pairs per sequence, query-gap
    power law.
    """

    task: str = "char_lm"
    seq_len: int = 128
    path: str = ""
    val_fraction: float = 0.1
    vocab_size: int = 128
    n_pairs: int = 4
    alpha: float = 0.1

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"data.task must be one of {TASKS}, got {self.task!r}")
        if self.seq_len < 1:
            raise ValueError(f"data.seq_len must be positive, got {self.seq_len}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")


def build_task(config: DataConfig, seed: int) -> Task:
    if config.task == "mqar":
        return MQAR(config.seq_len, config.vocab_size, config.n_pairs, config.alpha, seed)
    text = read_text(config.path) if config.path else builtin_corpus()
    return CharLM(text, config.seq_len, config.val_fraction, seed)
