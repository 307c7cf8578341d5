"""String-to-string tasks for encoder-decoders, generated from a seed, with a character
vocabulary and a length-generalisation split.

Tasks (``make_pairs(task, n, lengths, seed)`` -> [(source, target)], strings):

    "reverse"  a digit string and its reversal: "3141" -> "1413" (Sutskever et al. 2014
               reversed the source to ease learning; here reversal is the task).
    "sort"     a digit string and its digits in ascending order: "3141" -> "1134".
    "add"      two numbers of ``length`` digits each (leading digit nonzero) and their sum:
               "123+989" -> "1112" (Zaremba & Sutskever 2014, "Learning to Execute").
    "date"     a date written in one of the human formats of ``DATE_FORMATS`` and its ISO 8601
               form: "Tuesday, 3 March 1987" -> "1987-03-03" (the classic attention demo).
               ``length`` is unused; months and weekdays are spelled from this module's own
               English names, not the C locale's, so the strings do not depend on locale.

For the digit tasks ``lengths`` are the source lengths in digits (for "add": digits per
operand); each pair draws its length uniformly from ``lengths``. Train on short strings
and test on longer ones with ``lengths`` of the test call (``LENGTH_SPLITS``).

Dates: the days from 1950-01-01 to 2049-12-31 are split once by a permutation with the
fixed seed ``DATE_SPLIT_SEED``: ``DATE_TEST_FRACTION`` of them are test days, never drawn by
the "train" split; ``make_pairs("date", ..., split="test")`` draws only test days, so test
dates are unseen dates (each in a randomly chosen format).

Vocabulary (``CharVocab``): 0 padding, 1 begin-of-sequence, 2 end-of-sequence, then the
characters. ``VOCAB[task]`` covers every string the task can produce.

``TransductionTask`` serves these pairs to ``statewise train`` (a "seq2seq" model head).
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from statewise.errors import DataError

TASKS = ("reverse", "sort", "add", "date")
PAD, BOS, EOS = 0, 1, 2
N_SPECIAL = 3

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
FIRST_DAY, LAST_DAY = datetime.date(1950, 1, 1), datetime.date(2049, 12, 31)
DATE_SPLIT_SEED, DATE_TEST_FRACTION = 20_260_101, 0.2


def _date_formats() -> tuple:
    """Each format as a function of a date; unambiguous (the year has 4 digits wherever the
    day and the month are both numbers)."""

    def mon(d: datetime.date) -> str:
        return MONTHS[d.month - 1]

    return (
        lambda d: f"{d.day} {mon(d)} {d.year}",
        lambda d: f"{mon(d)} {d.day}, {d.year}",
        lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",
        lambda d: f"{d.year}/{d.month}/{d.day}",
        lambda d: f"{d.day} {mon(d)[:3]} {d.year}",
        lambda d: f"{mon(d)[:3].upper()} {d.day:02d} {d.year}",
        lambda d: f"{WEEKDAYS[d.weekday()]}, {d.day} {mon(d)} {d.year}",
        lambda d: f"{WEEKDAYS[d.weekday()][:3]} {mon(d)[:3]} {d.day} {d.year}",
        lambda d: f"{d.day}-{mon(d)[:3].lower()}-{d.year}",
        lambda d: f"{d.year}{d.month:02d}{d.day:02d}",
    )


DATE_FORMATS = _date_formats()
LENGTH_SPLITS = {
    "reverse": {"train": range(1, 21), "test": (30,)},
    "sort": {"train": range(1, 21), "test": (30,)},
    "add": {"train": range(1, 11), "test": (15, 20)},
    "date": {"train": (0,), "test": (0,)},
}


def _date_characters() -> str:
    text = "".join(MONTHS) + "".join(WEEKDAYS)
    text += "".join(m[:3].upper() + m[:3].lower() for m in MONTHS)
    return "".join(sorted(set(text + "0123456789 ,./-")))


VOCAB_CHARACTERS = {
    "reverse": "0123456789",
    "sort": "0123456789",
    "add": "0123456789+",
    "date": _date_characters(),
}


@dataclass(frozen=True)
class CharVocab:
    """Characters <-> token ids; ids 0, 1, 2 are padding, begin and end of sequence."""

    characters: str

    @property
    def size(self) -> int:
        return N_SPECIAL + len(self.characters)

    def encode(self, text: str) -> list[int]:
        index = {c: i + N_SPECIAL for i, c in enumerate(self.characters)}
        try:
            return [index[c] for c in text]
        except KeyError as err:
            raise DataError(f"character {err.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: Sequence[int]) -> str:
        """Characters of ``ids`` up to the first end-of-sequence; padding and begin skipped."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i >= N_SPECIAL:
                out.append(self.characters[i - N_SPECIAL])
        return "".join(out)

    def batch(self, texts: Sequence[str], *, bos: bool = False, eos: bool = False) -> torch.Tensor:
        """(B, longest) int64, right-padded with 0, optionally framed by BOS / EOS."""
        rows = [([BOS] if bos else []) + self.encode(t) + ([EOS] if eos else []) for t in texts]
        out = torch.full((len(rows), max(map(len, rows), default=0)), PAD, dtype=torch.long)
        for r, ids in enumerate(rows):
            out[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


VOCAB = {task: CharVocab(chars) for task, chars in VOCAB_CHARACTERS.items()}


def _digits(rng: random.Random, n: int, leading_nonzero: bool = False) -> str:
    first = rng.choice("123456789" if leading_nonzero else "0123456789")
    return first + "".join(rng.choice("0123456789") for _ in range(n - 1))


def _date_days(split: str) -> list[int]:
    """Day offsets from FIRST_DAY of the "train" or "test" days (fixed for all seeds)."""
    days = list(range((LAST_DAY - FIRST_DAY).days + 1))
    random.Random(DATE_SPLIT_SEED).shuffle(days)
    n_test = round(DATE_TEST_FRACTION * len(days))
    return days[:n_test] if split == "test" else days[n_test:]


def make_pairs(
    task: str,
    n: int,
    lengths: Sequence[int] | None = None,
    seed: int = 0,
    split: str = "train",
) -> list[tuple[str, str]]:
    """``n`` (source, target) pairs of ``task`` (module docstring); lengths default to the
    split's ``LENGTH_SPLITS``. The same (task, n, lengths, seed, split) gives the same pairs."""
    if task not in TASKS:
        raise DataError(f"task must be one of {TASKS}, got {task!r}")
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    lengths = tuple(LENGTH_SPLITS[task][split] if lengths is None else lengths)
    if task != "date" and (not lengths or min(lengths) < 1):
        raise DataError(f"lengths must be positive digit counts, got {lengths!r}")
    rng = random.Random(f"{task}:{split}:{seed}")
    if task == "date":
        days = _date_days(split)
        out = []
        for _ in range(n):
            day = FIRST_DAY + datetime.timedelta(days=rng.choice(days))
            out.append((rng.choice(DATE_FORMATS)(day), day.isoformat()))
        return out
    out = []
    for _ in range(n):
        length = rng.choice(lengths)
        if task == "add":
            a, b = (_digits(rng, length, leading_nonzero=True) for _ in range(2))
            out.append((f"{a}+{b}", str(int(a) + int(b))))
        else:
            s = _digits(rng, length)
            out.append((s, s[::-1] if task == "reverse" else "".join(sorted(s))))
    return out


class TransductionTask:
    """A task of ``TASKS`` as ``statewise train`` reads it (model.head "seq2seq").

    Batches are (source (B, S), target (B, U) = BOS y EOS), ids of ``VOCAB[task]`` right-
    padded with PAD. The pairs of training step s are drawn from (seed, s) with source
    lengths ``lengths`` (empty: the task's ``LENGTH_SPLITS`` training lengths); validation
    pairs from a seed of their own, with the training lengths (for "date", from the unseen
    test days); ``test_batches`` at one length from the "test" split.
    """

    heads = ("seq2seq",)
    metric = "exact_match"

    def __init__(self, task: str, seed: int, lengths: Sequence[int] = ()) -> None:
        if task not in TASKS:
            raise DataError(f"task must be one of {TASKS}, got {task!r}")
        self.task, self.seed = task, seed
        self.lengths = tuple(lengths) or tuple(LENGTH_SPLITS[task]["train"])
        self.vocab = VOCAB[task]
        self.vocab_size = self.vocab.size

    def batch(self, pairs: Sequence[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(source ids, BOS target EOS ids) of ``pairs``, each right-padded."""
        sources, targets = zip(*pairs, strict=True)
        return self.vocab.batch(sources), self.vocab.batch(targets, bos=True, eos=True)

    def train_batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = make_pairs(self.task, batch_size, self.lengths, self.seed * 1_000_003 + step)
        return self.batch(pairs)

    def eval_batches(self, batch_size: int, n_batches: int) -> list[tuple[torch.Tensor, ...]]:
        split = "test" if self.task == "date" else "train"
        lengths = None if self.task == "date" else self.lengths
        pairs = make_pairs(self.task, batch_size * n_batches, lengths, -2 * self.seed - 1, split)
        return self._batches(pairs, batch_size)

    def test_batches(
        self, batch_size: int, n_batches: int, length: int
    ) -> list[tuple[torch.Tensor, ...]]:
        """Test pairs whose sources have ``length`` digits (per operand for "add")."""
        if self.task == "date":
            raise DataError("the date task has no lengths: its validation pairs are unseen dates")
        pairs = make_pairs(self.task, batch_size * n_batches, (length,), -2 * self.seed - 2, "test")
        return self._batches(pairs, batch_size)

    def _batches(
        self, pairs: list[tuple[str, str]], batch_size: int
    ) -> list[tuple[torch.Tensor, ...]]:
        return [self.batch(pairs[i : i + batch_size]) for i in range(0, len(pairs), batch_size)]
