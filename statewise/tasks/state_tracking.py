"""State-tracking tasks from Deletang et al. 2023, "Neural Networks and the Chomsky Hierarchy".

Regular: parity (is the number of 1s odd), even_pairs (is the number of "ab" plus "ba" pairs
even, which holds iff the first and last symbols agree), cycle_nav (walk a cycle of
``modulus`` positions with moves +1, -1, 0 from position 0; where do you end), mod_arith
(``3 + 1 * 4 - 2`` over Z_modulus with the usual precedence). Context-free: mod_arith with
brackets (``( 3 + 1 ) * ( 4 - 2 )``).

Each example is a string of n symbols followed by the query token ``=``; the target at ``=``
is the answer token (the only position with a loss). Token 0 is padding, 1 is ``=``, then
come the task's symbols, then its answers. Training draws n uniformly in
[1, train_max_len] per example and right-pads to width train_max_len + 1 (padding has no
target; the models are causal, so it cannot change an answer). ``test_batches(batch_size,
n_batches, length)`` gives examples of exactly ``length`` symbols (e.g. 41 .. 256), width
length + 1. Arithmetic strings have odd lengths, so an even length there means length - 1
symbols. Parity, with n = 5:

    inputs :  1  0  1  1  0  =  _  _       (_ = padding)
    targets:  -  -  -  -  -  1  -  -       (- = ignored; the answer token for "odd")

With ``prefix_targets`` the training batches also ask, at each symbol that ends a string of
the task, for that prefix's answer (dense supervision; validation and test batches keep the
single target at ``=``). Parity, n = 5:

    inputs :  1  0  1  1  0  =  _  _
    targets:  1  1  0  1  1  1  -  -

Arithmetic prefixes are strings at the numbers only (``3 + 1 *`` is not); with brackets most
prefixes are not strings, so the option is refused there.
"""

from __future__ import annotations

import itertools

import torch

from statewise.errors import DataError
from statewise.tasks.base import IGNORE, Batch, step_generator
from statewise.tasks.copying import TEST_SEED_OFFSET, GeneratedTask

PAD, QUERY, FIRST = 0, 1, 2
OPS = "+-*"


class StateTracking(GeneratedTask):
    """Shared layout; a subclass sets n_symbols, n_answers and ``examples``."""

    n_symbols: int
    n_answers: int

    def __init__(
        self, train_max_len: int = 40, seed: int = 0, prefix_targets: bool = False
    ) -> None:
        if train_max_len < 1:
            raise DataError(f"data.train_max_len must be >= 1, got {train_max_len}")
        self.train_max_len, self.seed = train_max_len, seed
        self.prefix_targets = bool(prefix_targets)
        self.seq_len = train_max_len + 1
        self.answer0 = FIRST + self.n_symbols  # token of answer 0
        self.vocab_size = self.answer0 + self.n_answers

    def check_length(self, length: int) -> None:
        if length < 1:
            raise DataError(f"a state-tracking test length must be >= 1, got {length}")

    def examples(self, lengths: list[int], g: torch.Generator) -> list[tuple[list[int], int]]:
        """(symbols as indices in [0, n_symbols), answer in [0, n_answers)) per length."""
        raise NotImplementedError

    def prefix_answers(self, symbols: list[int]) -> list[int | None]:
        """The answer of each prefix symbols[: i + 1], None where that prefix is not a
        string of the task; the last entry is the answer of the whole string."""
        raise NotImplementedError

    def train_batch(self, step: int, batch_size: int) -> Batch:
        g = step_generator(self.seed, step)
        return self.sample(batch_size, g, self.seq_len, dense=self.prefix_targets)

    def sample(
        self, batch_size: int, g: torch.Generator, length: int, dense: bool = False
    ) -> Batch:
        """Training and validation: n uniform in [1, train_max_len], padded to ``length``."""
        lengths = torch.randint(1, self.train_max_len + 1, (batch_size,), generator=g)
        return self.pack(self.examples(lengths.tolist(), g), length, dense)

    def pack(self, examples: list[tuple[list[int], int]], width: int, dense: bool = False) -> Batch:
        inputs = torch.full((len(examples), width), PAD)
        targets = torch.full_like(inputs, IGNORE)
        for row, (symbols, answer) in enumerate(examples):
            n = len(symbols)
            inputs[row, :n] = torch.tensor(symbols, dtype=torch.long) + FIRST
            inputs[row, n] = QUERY
            targets[row, n] = self.answer0 + answer
            if dense:
                for i, prefix in enumerate(self.prefix_answers(symbols)):
                    if prefix is not None:
                        targets[row, i] = self.answer0 + prefix
        return inputs, targets

    def test_batches(self, batch_size: int, n_batches: int, length: int) -> list[Batch]:
        """Examples of exactly ``length`` symbols (odd-rounded down for arithmetic), width
        length + 1, from a seed stream of their own."""
        self.check_length(length)
        g = step_generator(self.seed + TEST_SEED_OFFSET, length)
        return [
            self.pack(self.examples([length] * batch_size, g), length + 1) for _ in range(n_batches)
        ]


class Parity(StateTracking):
    """Symbols 0, 1; answer 1 iff the number of 1s is odd."""

    n_symbols, n_answers = 2, 2

    def examples(self, lengths: list[int], g: torch.Generator) -> list[tuple[list[int], int]]:
        out = []
        for n in lengths:
            bits = torch.randint(0, 2, (n,), generator=g).tolist()
            out.append((bits, sum(bits) % 2))
        return out

    def prefix_answers(self, symbols: list[int]) -> list[int | None]:
        return [int(x) % 2 for x in itertools.accumulate(symbols)]


class EvenPairs(StateTracking):
    """Symbols a = 0, b = 1; answer 1 iff the count of "ab" and "ba" pairs is even."""

    n_symbols, n_answers = 2, 2

    def examples(self, lengths: list[int], g: torch.Generator) -> list[tuple[list[int], int]]:
        out = []
        for n in lengths:
            s = torch.randint(0, 2, (n,), generator=g).tolist()
            out.append((s, int(s[0] == s[-1])))  # each change of symbol is one pair
        return out

    def prefix_answers(self, symbols: list[int]) -> list[int | None]:
        return [int(symbols[0] == x) for x in symbols]


class CycleNav(StateTracking):
    """Symbols: 0 = move +1, 1 = move -1, 2 = stay; answer the final position mod modulus."""

    n_symbols = 3

    STEP = (1, -1, 0)

    def __init__(
        self,
        train_max_len: int = 40,
        modulus: int = 5,
        seed: int = 0,
        prefix_targets: bool = False,
    ) -> None:
        if modulus < 2:
            raise DataError(f"data.modulus must be >= 2, got {modulus}")
        self.modulus = self.n_answers = modulus
        super().__init__(train_max_len, seed, prefix_targets)

    def examples(self, lengths: list[int], g: torch.Generator) -> list[tuple[list[int], int]]:
        out = []
        for n in lengths:
            moves = torch.randint(0, 3, (n,), generator=g).tolist()
            out.append((moves, sum(self.STEP[m] for m in moves) % self.modulus))
        return out

    def prefix_answers(self, symbols: list[int]) -> list[int | None]:
        positions = itertools.accumulate(self.STEP[m] for m in symbols)
        return [p % self.modulus for p in positions]


class ModArith(StateTracking):
    """Symbols: numbers 0 .. modulus-1, then ``+ - *`` and, with brackets, ``( )``.

    The answer is the value over Z_modulus with * binding tighter than + and -, both
    left-associative. Without brackets the numbers and operators alternate; with brackets an
    expression of n tokens is drawn recursively: ``( e )`` with probability 1/4, else
    ``e op e`` with a uniform split of the remaining tokens.
    """

    def __init__(
        self,
        train_max_len: int = 40,
        modulus: int = 5,
        brackets: bool = False,
        seed: int = 0,
        prefix_targets: bool = False,
    ) -> None:
        if modulus < 2:
            raise DataError(f"data.modulus must be >= 2, got {modulus}")
        if brackets and prefix_targets:
            raise DataError(
                "data.prefix_targets needs every other prefix to be an expression; with "
                "brackets most are not (use it with mod_arith)"
            )
        self.modulus = self.n_answers = modulus
        self.brackets = brackets
        self.n_symbols = modulus + len(OPS) + (2 if brackets else 0)
        super().__init__(train_max_len, seed, prefix_targets)
        self.names = [str(i) for i in range(modulus)] + list(OPS) + ["(", ")"][: 2 * brackets]

    def _draw(self, n: int, g: torch.Generator) -> list[str]:
        """An expression of exactly n tokens (n odd)."""
        if n == 1:
            return [str(int(torch.randint(0, self.modulus, (1,), generator=g)))]
        if self.brackets and torch.rand(1, generator=g).item() < 0.25:
            return ["(", *self._draw(n - 2, g), ")"]
        left = 2 * int(torch.randint(0, (n - 1) // 2, (1,), generator=g)) + 1
        op = OPS[int(torch.randint(0, len(OPS), (1,), generator=g))]
        return [*self._draw(left, g), op, *self._draw(n - 1 - left, g)]

    def examples(self, lengths: list[int], g: torch.Generator) -> list[tuple[list[int], int]]:
        out = []
        for n in lengths:
            tokens = self._draw(n - 1 + n % 2, g)  # the odd length <= n
            out.append(([self.names.index(t) for t in tokens], evaluate(tokens, self.modulus)))
        return out

    def prefix_answers(self, symbols: list[int]) -> list[int | None]:
        """Without brackets: at each number the value so far, kept as the sum of the
        finished terms plus the signed product of the open term; None at operators."""
        if self.brackets:
            raise DataError("prefix answers are defined for mod_arith without brackets only")
        m, out = self.modulus, []
        total, term, sign = 0, 1, 1
        for symbol in symbols:
            name = self.names[symbol]
            if name == "*":
                out.append(None)
            elif name in "+-":
                total, term, sign = total + sign * term, 1, 1 if name == "+" else -1
                out.append(None)
            else:
                term = term * int(name) % m
                out.append((total + sign * term) % m)
        return out


def evaluate(tokens: list[str], modulus: int) -> int:
    """Value of an arithmetic token list over Z_modulus (recursive descent)."""
    pos = 0

    def expr() -> int:
        nonlocal pos
        value = term()
        while pos < len(tokens) and tokens[pos] in "+-":
            op, pos = tokens[pos], pos + 1
            value = (value + term()) if op == "+" else (value - term())
        return value % modulus

    def term() -> int:
        nonlocal pos
        value = factor()
        while pos < len(tokens) and tokens[pos] == "*":
            pos += 1
            value = value * factor() % modulus
        return value

    def factor() -> int:
        nonlocal pos
        token, pos = tokens[pos], pos + 1
        if token == "(":
            value = expr()
            pos += 1  # the closing bracket
            return value
        return int(token)

    return expr()
