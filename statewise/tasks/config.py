"""DataConfig and the factory that turns it into a task."""

from __future__ import annotations

from dataclasses import dataclass, field

from statewise.errors import ConfigError, check_caps, check_finite_fields
from statewise.tasks.base import Task
from statewise.tasks.code_tagging import CodeTaggingTask
from statewise.tasks.copying import InductionHeads, SelectiveCopy
from statewise.tasks.digit_lines import DigitLinesTask
from statewise.tasks.labelled import AnswerAtEnd
from statewise.tasks.listops import N_CLASSES, VOCAB, listops
from statewise.tasks.long_range import Adding, Passkey
from statewise.tasks.mqar import MQAR
from statewise.tasks.seq_class import PIXEL_VOCAB, digits
from statewise.tasks.state_tracking import CycleNav, EvenPairs, ModArith, Parity
from statewise.tasks.text import build_text_task
from statewise.tasks.tokenizer import Tokenizer
from statewise.tasks.transduction import TASKS as TRANSDUCTION
from statewise.tasks.transduction import TransductionTask

STATE_TRACKING = ("parity", "mod_arith", "mod_arith_brackets", "cycle_nav", "even_pairs")
# the ones whose prefixes are strings of the task often enough for data.prefix_targets
DENSE_STATE_TRACKING = ("parity", "mod_arith", "cycle_nav", "even_pairs")
TASKS = (
    "char_lm",
    "lm",
    "mqar",
    "selective_copy",
    "induction_heads",
    *STATE_TRACKING,
    "adding",
    "passkey",
    "listops",
    "seq_class",
    *TRANSDUCTION,
    "digit_lines",
    "python_tags",
)
# the tasks of the seq2seq, recogniser and tagger heads (the others are language modelling)
SEQUENCE_TASKS = (*TRANSDUCTION, "digit_lines", "python_tags")
DATASETS = ("digits",)


# sizes above these are typos on any machine statewise runs on (check_caps)
CAPS = {
    "seq_len": 1 << 24,
    "vocab_size": 1 << 24,
    "n_pairs": 1 << 20,
    "n_copy": 1 << 20,
    "train_max_len": 1 << 24,
    "modulus": 1 << 24,
    "n_levels": 1 << 24,
    "n_digits": 1 << 20,
    "n_train": 1 << 26,
    "n_val": 1 << 26,
    "n_test": 1 << 26,
    "max_depth": 1 << 10,
    "max_args": 1 << 10,
    "min_length": 1 << 24,
}


@dataclass
class DataConfig:
    """task: "char_lm" (byte-level language modelling), "lm" (language modelling with
    data.tokenizer), "mqar" (synthetic associative recall) or one of the synthetic tasks below.

    path: the text of char_lm and lm (docs/training.md, "Your own data"): a text file, a
    directory (its text files, recursively), a glob pattern, JSON Lines (``*.jsonl``, the
    string in field text_field of each line), or a directory from ``statewise data prepare``
    (memory-mapped); each file or JSON line is one document. Empty means the built-in corpus
    (the standard library's source, one document per file). val_fraction of the documents
    are held out, chosen by train.seed (a single document: its last val_fraction of tokens).
    tokenizer: lm's tokenizer directory (``statewise tokenizer train``); empty means bytes.
    text_field: the field of a JSON Lines record that holds the text.
    vocab_size, n_pairs, alpha: mqar's vocabulary, key-value pairs per sequence, query-gap
    power law; also the vocabulary of selective_copy and induction_heads.

    Synthetic tasks (see their modules for the token layouts): "selective_copy",
    "induction_heads" (tasks.copying; seq_len is the input width), "parity", "mod_arith",
    "mod_arith_brackets", "cycle_nav", "even_pairs" (tasks.state_tracking; seq_len is unused,
    the width is train_max_len + 1), "adding", "passkey" (tasks.long_range; seq_len is the
    input width).
    n_copy: selective_copy's number of tokens to copy.
    train_max_len: state tracking trains on strings of 1 .. train_max_len symbols.
    prefix_targets: state tracking (not mod_arith_brackets): training batches also ask for
    the answer of every prefix that is itself a string of the task, at its last symbol
    (dense supervision); validation and test still score the answer at the query only.
    modulus: mod_arith's ring Z_modulus and cycle_nav's cycle length.
    n_levels: adding's quantisation, numbers k / (n_levels - 1) for k in 0 .. n_levels-1.
    n_digits: passkey's key length.

    Classification as language modelling (tasks.labelled.AnswerAtEnd: the sequence, a query
    token, and the label's answer token as the only target):
    "listops" (tasks.listops, generated from the seed; seq_len is the longest expression in
    tokens): n_train, n_val, n_test expressions, distinct across splits, of depth <=
    max_depth, 2 .. max_args arguments per operator, a nested operator with probability
    p_operator, and at least min_length tokens. Model vocabulary >= 27 (16 + query + 10).
    "seq_class" (tasks.seq_class): dataset "digits" (scikit-learn's 8 x 8 digits, read from
    the installed package) pixel by pixel, 64 tokens of 17 grey levels; a split of the
    1797 images from the seed with val_fraction and test_fraction. Model vocabulary >= 29
    (18 + query + 10).

    Sequence to sequence and labelling, for the model heads of the same names (docs/seq2seq.md):
    "reverse", "sort", "add", "date" (tasks.transduction, model.head "seq2seq"; lengths: the
    digit counts of training sources, empty for the task's default), "digit_lines"
    (tasks.digit_lines, lines of 3-12 handwritten digits read column by column; model.head
    "ctc" or "transducer"), "python_tags" (tasks.code_tagging, windows of seq_len characters
    of standard-library source, one tag per character; model.head "tagger").
    """

    task: str = "char_lm"
    seq_len: int = 128
    path: str = ""
    val_fraction: float = 0.1
    vocab_size: int = 128
    n_pairs: int = 4
    alpha: float = 0.1
    n_copy: int = 16
    train_max_len: int = 40
    modulus: int = 5
    n_levels: int = 10
    n_digits: int = 5
    n_train: int = 10_000
    n_val: int = 500
    n_test: int = 1_000
    max_depth: int = 4
    max_args: int = 5
    p_operator: float = 0.25
    min_length: int = 1
    dataset: str = "digits"
    test_fraction: float = 0.2
    tokenizer: str = ""
    text_field: str = "text"
    lengths: list[int] = field(default_factory=list)
    prefix_targets: bool = False

    def __post_init__(self) -> None:
        check_finite_fields(self, "data")
        check_caps(self, "data", CAPS)
        if self.task not in TASKS:
            raise ConfigError(f"data.task must be one of {TASKS}, got {self.task!r}")
        if self.seq_len < 1:
            raise ConfigError(f"data.seq_len must be positive, got {self.seq_len}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        for name, low in (
            ("n_copy", 1),
            ("train_max_len", 1),
            ("modulus", 2),
            ("n_levels", 2),
            ("n_digits", 1),
            ("n_train", 1),
            ("n_val", 1),
            ("n_test", 1),
            ("max_depth", 1),
            ("max_args", 2),
            ("min_length", 1),
        ):
            if getattr(self, name) < low:
                raise ConfigError(f"data.{name} must be >= {low}, got {getattr(self, name)}")
        if self.prefix_targets is not False and (
            self.prefix_targets is not True or self.task not in DENSE_STATE_TRACKING
        ):
            raise ConfigError(
                "data.prefix_targets must be true or false and is for the state-tracking "
                f"tasks without brackets ({', '.join(DENSE_STATE_TRACKING)}); "
                f"got {self.prefix_targets!r} with task {self.task!r}"
            )
        if not 0.0 <= self.p_operator < 1.0:
            raise ConfigError(f"data.p_operator must be in [0, 1), got {self.p_operator}")
        if self.task == "seq_class" and not 0.0 < self.test_fraction < 1.0 - self.val_fraction:
            raise ConfigError(
                f"data.test_fraction must be in (0, 1 - val_fraction), got {self.test_fraction}"
            )
        if any(n < 1 for n in self.lengths):
            raise ConfigError(f"data.lengths must be positive digit counts, got {self.lengths}")
        if self.lengths and self.task not in ("reverse", "sort", "add"):
            raise ConfigError("data.lengths is for the tasks reverse, sort and add")
        if self.dataset not in DATASETS:
            raise ConfigError(f"data.dataset must be one of {DATASETS}, got {self.dataset!r}")


def build_task(config: DataConfig, seed: int, tokenizer: Tokenizer | None = None) -> Task:
    """The task of ``config``; ``tokenizer`` replaces data.tokenizer for text tasks (a
    checkpoint's reader passes the run directory's copy)."""
    if config.task == "mqar":
        return MQAR(config.seq_len, config.vocab_size, config.n_pairs, config.alpha, seed)
    if config.task == "selective_copy":
        return SelectiveCopy(config.seq_len, config.vocab_size, config.n_copy, seed)
    if config.task == "induction_heads":
        return InductionHeads(config.seq_len, config.vocab_size, seed)
    if config.task in STATE_TRACKING:
        return _state_tracking(config, seed)
    if config.task == "adding":
        return Adding(config.seq_len, config.n_levels, seed)
    if config.task == "passkey":
        return Passkey(config.seq_len, config.n_digits, seed)
    if config.task == "listops":
        return _listops(config, seed)
    if config.task in TRANSDUCTION:
        return TransductionTask(config.task, seed, config.lengths)
    if config.task == "digit_lines":
        return DigitLinesTask(seed)
    if config.task == "python_tags":
        return CodeTaggingTask(config.seq_len, seed)
    if config.task == "seq_class":
        splits = digits(seed, val_fraction=config.val_fraction, test_fraction=config.test_fraction)
        return AnswerAtEnd(splits, PIXEL_VOCAB, N_CLASSES, seed)
    return build_text_task(
        config.task,
        config.path,
        config.seq_len,
        config.val_fraction,
        seed,
        tokenizer if tokenizer is not None else config.tokenizer,
        config.text_field,
    )


def _state_tracking(config: DataConfig, seed: int) -> Task:
    dense = config.prefix_targets
    if config.task == "parity":
        return Parity(config.train_max_len, seed, dense)
    if config.task == "even_pairs":
        return EvenPairs(config.train_max_len, seed, dense)
    if config.task == "cycle_nav":
        return CycleNav(config.train_max_len, config.modulus, seed, dense)
    brackets = config.task == "mod_arith_brackets"
    return ModArith(config.train_max_len, config.modulus, brackets, seed, dense)


def _listops(config: DataConfig, seed: int) -> AnswerAtEnd:
    if config.seq_len < 4:
        raise ConfigError(
            f"data.seq_len (the longest expression) must be >= 4, got {config.seq_len}"
        )
    splits = listops(
        config.n_train,
        config.n_val,
        config.n_test,
        seed=seed,
        max_depth=config.max_depth,
        max_args=config.max_args,
        max_length=config.seq_len,
        p_operator=config.p_operator,
        min_length=config.min_length,
    )
    return AnswerAtEnd(splits, len(VOCAB), N_CLASSES, seed)
