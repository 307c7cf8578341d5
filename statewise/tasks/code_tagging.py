"""Tagging Python source character by character, from the standard library's own files.

Each character of a source file gets one of ``CATEGORIES``, defined through the standard
``tokenize`` module:

    name        a NAME token that is not a keyword (soft keywords such as ``match``,
                ``case``, ``type`` and ``_`` count as names: ``keyword.iskeyword`` is False)
    keyword     a NAME token for which ``keyword.iskeyword`` is True (``def``, ``None``, ...)
    operator    an OP token (brackets, punctuation, operators)
    number      a NUMBER token
    string      a STRING token, prefix and quotes included (and, on Python >= 3.12, the
                FSTRING_START / FSTRING_MIDDLE / FSTRING_END tokens, with the expressions
                inside an f-string tagged as the tokens they are)
    comment     a COMMENT token, the ``#`` included
    whitespace  every character no such token covers: spaces and tabs between tokens,
                newlines, indentation, backslash continuations

Data: ``MODULES`` is a fixed list of pure-Python standard-library modules, split by module
into train / val / test (``SPLIT_MODULES``), read from this Python installation
(``importlib.util.find_spec(name).origin``; nothing is downloaded). Inputs are characters as
``CHAR_VOCAB`` ids (printable ASCII, tab and newline; anything else is ``UNKNOWN``). Since
the files change between Python versions, tests check the tagging's rules, not counts.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import keyword
import tokenize
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from statewise.errors import DataError

CATEGORIES = ("whitespace", "name", "keyword", "operator", "number", "string", "comment")
WHITESPACE, NAME, KEYWORD, OPERATOR, NUMBER, STRING, COMMENT = range(len(CATEGORIES))
_STRING_TYPES = {
    getattr(tokenize, t)
    for t in ("STRING", "FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")
    if hasattr(tokenize, t)
}
_CATEGORY_OF_TYPE = {tokenize.OP: OPERATOR, tokenize.NUMBER: NUMBER, tokenize.COMMENT: COMMENT}

PAD, UNKNOWN = 0, 1
CHARACTERS = "\t\n" + "".join(chr(c) for c in range(32, 127))
CHAR_VOCAB = {c: i + 2 for i, c in enumerate(CHARACTERS)}
VOCAB_SIZE = 2 + len(CHARACTERS)

SPLIT_MODULES = {
    "train": (
        "argparse",
        "ast",
        "calendar",
        "configparser",
        "csv",
        "dataclasses",
        "difflib",
        "enum",
        "fractions",
        "functools",
        "gettext",
        "heapq",
        "inspect",
        "ipaddress",
        "json.decoder",
        "json.encoder",
        "pprint",
        "shlex",
        "statistics",
        "string",
        "tarfile",
        "textwrap",
        "tokenize",
        "zipfile",
    ),
    "val": ("bisect", "colorsys", "fnmatch", "glob", "graphlib", "numbers"),
    "test": ("pickletools", "ftplib", "gzip", "imaplib", "optparse", "quopri", "smtplib", "wave"),
}
MODULES = tuple(m for names in SPLIT_MODULES.values() for m in names)


def tag_source(text: str) -> list[int]:
    """The category of each character of ``text`` (module docstring), as ints."""
    line_starts, offset = [], 0
    for line in io.StringIO(text):
        line_starts.append(offset)
        offset += len(line)
    line_starts.append(offset)
    tags = [WHITESPACE] * len(text)
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError) as err:
        raise DataError(f"the source does not tokenize: {err}") from None
    for tok in tokens:
        if tok.type == tokenize.NAME:
            category = KEYWORD if keyword.iskeyword(tok.string) else NAME
        elif tok.type in _STRING_TYPES:
            category = STRING
        else:
            category = _CATEGORY_OF_TYPE.get(tok.type)
            if category is None:
                continue  # NEWLINE, NL, INDENT, DEDENT, ENDMARKER: whitespace
        start = line_starts[tok.start[0] - 1] + tok.start[1]
        end = line_starts[tok.end[0] - 1] + tok.end[1]
        tags[start:end] = [category] * (end - start)
    return tags


def module_source(name: str) -> str:
    """The source text of standard-library module ``name`` in this installation."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise DataError(f"{name} has no Python source file in this installation")
    return Path(spec.origin).read_text(encoding="utf-8")


def encode_characters(text: str) -> np.ndarray:
    """Character ids (``CHAR_VOCAB``, ``UNKNOWN`` for anything else), int64."""
    return np.array([CHAR_VOCAB.get(c, UNKNOWN) for c in text], dtype=np.int64)


@dataclass
class TaggedText:
    """One split: characters (N,) ids and tags (N,), the split's modules concatenated."""

    chars: np.ndarray
    tags: np.ndarray

    def windows(self, length: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``n`` random windows of ``length`` characters: (n, length) ids and tags."""
        if not 1 <= length <= len(self.chars):
            raise DataError(f"length must be in [1, {len(self.chars)}], got {length}")
        starts = np.random.default_rng(seed).integers(0, len(self.chars) - length + 1, n)
        index = starts[:, None] + np.arange(length)
        return self.chars[index], self.tags[index]


@functools.cache
def tagged_split(split: str) -> TaggedText:
    """The modules of ``split`` ("train", "val", "test"), characters and tags (read and
    tagged once per process: the arrays are shared, so treat them as read-only)."""
    if split not in SPLIT_MODULES:
        raise DataError(f"split must be one of {tuple(SPLIT_MODULES)}, got {split!r}")
    chars, tags = [], []
    for name in SPLIT_MODULES[split]:
        text = module_source(name)
        chars.append(encode_characters(text))
        tags.append(np.array(tag_source(text), dtype=np.int64))
    return TaggedText(np.concatenate(chars), np.concatenate(tags))


class CodeTaggingTask:
    """Python tagging as ``statewise train`` reads it (model.head "tagger"): batches of
    (characters (B, seq_len), tags (B, seq_len)) int64, windows of the train split drawn
    from (seed, step); validation windows of the val split, ``test_batches`` of the test
    split's. Span scores count runs of one tag outside whitespace (``outside_tag``)."""

    heads = ("tagger",)
    metric = "accuracy"
    vocab_size = VOCAB_SIZE
    n_classes = len(CATEGORIES)
    outside_tag = WHITESPACE

    def __init__(self, seq_len: int, seed: int) -> None:
        self.seq_len, self.seed = seq_len, seed
        self.splits = {name: tagged_split(name) for name in SPLIT_MODULES}

    def _windows(self, split: str, length: int, n: int, seed: int) -> tuple[torch.Tensor, ...]:
        chars, tags = self.splits[split].windows(length, n, seed)
        return torch.from_numpy(chars), torch.from_numpy(tags)

    def train_batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, ...]:
        return self._windows("train", self.seq_len, batch_size, self.seed * 1_000_003 + step)

    def eval_batches(self, batch_size: int, n_batches: int) -> list[tuple[torch.Tensor, ...]]:
        return [
            self._windows("val", self.seq_len, batch_size, [self.seed, i]) for i in range(n_batches)
        ]

    def test_batches(
        self, batch_size: int, n_batches: int, length: int
    ) -> list[tuple[torch.Tensor, ...]]:
        """Windows of ``length`` characters of the test modules."""
        return [
            self._windows("test", length, batch_size, [self.seed, length, i])
            for i in range(n_batches)
        ]
