"""What an arena runs: the tasks (with their settings and test lengths) and the suites.

A suite names the layers, the tasks, the parameter budget every model is matched to, the
wall-clock training budget of one cell (one layer on one task with one seed, the whole
learning-rate sweep included), and the learning rates of the sweep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from statewise.errors import ArgumentError

STATE_TRACKING_TESTS = (41, 64, 128, 256)  # trained on 1 .. 40 symbols


@dataclass(frozen=True)
class TaskSpec:
    """One task of the arena.

    data: DataConfig fields (``task`` included). test_lengths: lengths the trained model is
    also evaluated at (the task's ``test_batches``). headline: "test" makes the mean
    accuracy over test_lengths the task's metric (state tracking: can it extrapolate);
    "val" uses the validation split at the training length.
    """

    name: str
    data: dict[str, Any]
    test_lengths: tuple[int, ...] = ()
    headline: str = "val"


def _state_tracking(name: str) -> TaskSpec:
    return TaskSpec(name, {"task": name, "train_max_len": 40}, STATE_TRACKING_TESTS, "test")


# the Zoology setting: length 64, vocabulary 128, 4 key-value pairs
TASK_SPECS: dict[str, TaskSpec] = {
    "mqar": TaskSpec("mqar", {"task": "mqar", "seq_len": 64, "vocab_size": 128, "n_pairs": 4}),
    # the harder Zoology point of the arena issue: 8 pairs at length 128
    "mqar_128x8": TaskSpec(
        "mqar_128x8", {"task": "mqar", "seq_len": 128, "vocab_size": 128, "n_pairs": 8}
    ),
    **{n: _state_tracking(n) for n in ("parity", "mod_arith", "cycle_nav", "even_pairs")},
    "mod_arith_brackets": _state_tracking("mod_arith_brackets"),
    "selective_copy": TaskSpec(
        "selective_copy", {"task": "selective_copy", "seq_len": 128, "vocab_size": 16}
    ),
    "induction_heads": TaskSpec(
        "induction_heads",
        {"task": "induction_heads", "seq_len": 64, "vocab_size": 16},
        (64, 128, 256, 512, 1024),
    ),
    "char_lm": TaskSpec("char_lm", {"task": "char_lm", "seq_len": 128}),
}


def task_spec(name: str) -> TaskSpec:
    """The arena's settings for ``name``; a task it has no settings for runs with
    DataConfig's defaults (so tasks added to ``statewise.tasks`` work at once)."""
    from statewise.tasks.config import TASKS

    if name in TASK_SPECS:
        return TASK_SPECS[name]
    if name not in TASKS:
        raise ArgumentError(f"unknown task {name!r}; choose from: {', '.join(known_tasks())}")
    return TaskSpec(name, {"task": name})


def known_tasks() -> list[str]:
    from statewise.tasks.config import TASKS

    return list(dict.fromkeys([*TASK_SPECS, *TASKS]))


@dataclass(frozen=True)
class Suite:
    """layers, tasks; params: the parameter budget of every model (d_model is chosen per
    layer to come closest), unless d_model fixes the width of every model (Zoology's
    comparison); budget_s: training seconds per cell, shared by the lr sweep;
    lrs: the learning rates tried per cell, per layer family (key "default" for the rest);
    seeds: how many seeds (0 .. seeds-1)."""

    name: str
    layers: tuple[str, ...]
    tasks: tuple[str, ...]
    params: int
    budget_s: float
    lrs: dict[str, tuple[float, ...]] = field(default_factory=dict)
    seeds: int = 1
    n_layers: int = 2
    batch_size: int = 32
    eval_batches: int = 4
    d_model: int | None = None  # every model at this width instead of matching ``params``

    def lrs_for(self, family: str) -> tuple[float, ...]:
        return self.lrs.get(family, self.lrs["default"])


QUICK_LAYERS = ("lstm", "mingru", "mamba", "retnet", "mlstm", "attention")
SWEEP = {"default": (1e-3, 3e-3)}


def _seq_class_if_installed() -> tuple[str, ...]:
    """("seq_class",) when scikit-learn, whose wheel holds its digits, is installed."""
    import importlib.util

    return ("seq_class",) if importlib.util.find_spec("sklearn") is not None else ()


def builtin_suites() -> dict[str, Suite]:
    """quick: the README's 10-minute run; standard: every layer on the comparison tasks,
    about 1.5 hours with ``--jobs 2`` here (29 layers); full: more tasks, larger, longer,
    three seeds."""
    from statewise.layers import names

    standard_tasks = (
        "mqar",
        "parity",
        "mod_arith",
        "selective_copy",
        "induction_heads",
        "char_lm",
        *_seq_class_if_installed(),
    )
    full_tasks = (*standard_tasks, "cycle_nav", "even_pairs", "listops")
    return {
        "quick": Suite(
            "quick",
            QUICK_LAYERS,
            ("mqar", "parity", "char_lm"),
            params=60_000,
            budget_s=18.0,
            # one learning rate, no sweep: 3e-3 suits attention too since its N(0, 1)
            # embedding (mqar 0.24 against 0.05 at 1e-3, char_lm 2.34 against 2.68 nats)
            lrs={"default": (3e-3,)},
        ),
        # every registered layer: 29 layers x 7 tasks x (40 s + overhead) / 2, ~1.5 h --jobs 2
        "standard": Suite("standard", tuple(names()), standard_tasks, 100_000, 40.0, SWEEP),
        "full": Suite(
            "full",
            tuple(names()),
            full_tasks,
            400_000,
            240.0,
            {"default": (3e-4, 1e-3, 3e-3, 1e-2)},
            seeds=3,
            batch_size=64,
            eval_batches=8,
        ),
    }
