"""Data: tokenizers, text corpora and synthetic tasks."""

from statewise.tasks.base import IGNORE, Batch, Task
from statewise.tasks.config import DataConfig, build_task
from statewise.tasks.copying import InductionHeads, SelectiveCopy
from statewise.tasks.labelled import AnswerAtEnd, LabelledSplit
from statewise.tasks.long_range import Adding, Passkey
from statewise.tasks.mqar import MQAR
from statewise.tasks.state_tracking import CycleNav, EvenPairs, ModArith, Parity
from statewise.tasks.text import CharLM, builtin_corpus
from statewise.tasks.tokenizer import ByteTokenizer

__all__ = [
    "IGNORE",
    "MQAR",
    "Adding",
    "AnswerAtEnd",
    "CycleNav",
    "EvenPairs",
    "InductionHeads",
    "ModArith",
    "Parity",
    "Passkey",
    "SelectiveCopy",
    "Batch",
    "ByteTokenizer",
    "CharLM",
    "DataConfig",
    "LabelledSplit",
    "Task",
    "build_task",
    "builtin_corpus",
]
