"""Run configs in TOML, mapped onto dataclasses: [model], [data], [train] and [log].

Unknown sections or keys and values of the wrong type are errors (ConfigError, a
ValueError); ``--section.key=value`` overrides from the command line are parsed as TOML
values, so ``--train.lr=1e-3``, ``--model.layer=retnet`` and ``--train.steps=10`` all work.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from statewise.errors import ConfigError, check_caps, check_finite_fields
from statewise.models.config import ModelConfig
from statewise.tasks.config import DataConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# sizes above these are typos on any machine statewise runs on (check_caps)
CAPS = {
    "steps": 1 << 40,
    "batch_size": 1 << 20,
    "warmup_steps": 1 << 40,
    "eval_batches": 1 << 20,
    "keep_checkpoints": 1 << 10,
}
OPTIMIZERS = ("adamw", "nt_asgd")
DTYPES = ("float32", "bfloat16")  # train.dtype: bfloat16 runs under autocast


@dataclass
class TrainConfig:
    """Optimisation: AdamW with linear warm-up then cosine decay to min_lr_ratio * lr.

    state_passing: every step starts from the final state of the previous step's batch
    (row by row, detached) instead of zeros, so the model also trains on the states it
    would reach far into sequences longer than seq_len (Buitrago Ruiz & Gu 2025, "Understanding
    and Improving Length Generalization in Recurrent Models"). On text (char_lm, lm) this
    is truncated backpropagation through time: the batches come from the task's
    ``stream_batch``, where row r reads consecutive windows of its own contiguous stream
    (the AWD-LSTM / Transformer-XL batching), so the carried state belongs to the text just
    before; a document boundary inside a window, and each new pass over the data, reset
    it. Tasks without ``stream_batch`` (synthetic ones) draw independent windows and the
    state runs on across them. Refused for global attention, whose key-value cache would
    fill up; local attention (a window) is fine.
    state_reset: with state passing, the chance that a row starts a step from the initial
    state instead of its carried one, so the model still works from a fresh start (with
    0, a model whose state decays slowly can come to rely on the warm states it always
    trains from: measured on Mamba's induction heads, docs/arena.md).

    state_noise: every step starts from Gaussian noise of this standard deviation added to
    the initial state (every float tensor of it), the other intervention of Buitrago Ruiz &
    Gu 2025 (0: off; not with state_passing). The hope was that noise a model cannot wait
    out within the training length makes it overwrite its state when it writes; on Mamba's
    induction heads it did not (1: the task not learnt; 0.1: no better; docs/arena.md).

    label_smoothing: the training loss's target puts this much of its mass evenly on every
    token (Szegedy et al. 2016; 0: plain cross-entropy). Validation loss stays plain. Its
    optimum is a finite logit margin, so a model that has solved its task stops being
    pushed to sharpen it further. On Mamba's induction heads, runs trained on after solving
    the task lost accuracy at 16x the training length; 0.1 stopped that (docs/arena.md).

    keep_checkpoints: the newest checkpoints kept in the run directory (at least 1; with 2,
    a reader falls back to the one before when the newest turns out corrupt).

    budget_s: stop after this many seconds of training, summed over resumes (0: no limit).
    The stop is a limit, not a plan: warm-up and cosine still run over ``steps``, so set
    ``steps`` to about what fits (``statewise arena`` plans its steps from timed passes).

    grad_accum: a step's batch_size rows run as this many micro-batches of consecutive rows
    (each loss weighted by its share of the batch's target tokens, so the gradient is the
    whole batch's); with state passing each micro-batch carries its own rows' state. 1: off.

    optimizer: "adamw", or "nt_asgd": plain SGD whose weights are averaged from the first
    evaluation whose val_loss is worse than the best of those more than ``nonmono``
    evaluations back (Merity et al. 2017, AWD-LSTM; their recipe: lr 30, grad_clip 0.25,
    weight_decay 1.2e-6, a constant lr: warmup_steps 0, min_lr_ratio 1; nonmono 5).
    Evaluations and checkpoints then use the averaged weights (statewise.train.optim.NTASGD).

    dtype: "float32", or "bfloat16": the forward and the loss run under bfloat16 autocast
    (GEMMs in bfloat16), while the weights, the optimizer, the recurrences and the states
    stay float32 (docs/training.md, "bfloat16"); evaluation runs in float32.
    """

    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 8
    checkpoint_every: int = 100
    state_passing: bool = False
    state_reset: float = 0.0
    state_noise: float = 0.0
    label_smoothing: float = 0.0
    budget_s: float = 0.0
    keep_checkpoints: int = 2
    grad_accum: int = 1
    optimizer: str = "adamw"
    nonmono: int = 5
    dtype: str = "float32"

    def __post_init__(self) -> None:
        check_finite_fields(self, "train")
        check_caps(self, "train", CAPS)
        for name in (
            "steps",
            "batch_size",
            "log_every",
            "eval_every",
            "eval_batches",
            "checkpoint_every",
            "keep_checkpoints",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if min(self.warmup_steps, self.grad_clip, self.weight_decay, self.budget_s) < 0:
            raise ConfigError(
                "train.warmup_steps, grad_clip, weight_decay and budget_s must be >= 0"
            )
        if not 0 <= self.state_reset <= 1:
            raise ConfigError(f"train.state_reset must be in [0, 1], got {self.state_reset}")
        if self.state_noise < 0:
            raise ConfigError(f"train.state_noise must be >= 0, got {self.state_noise}")
        if self.state_noise > 0 and self.state_passing:
            raise ConfigError("train.state_noise and train.state_passing cannot both be on")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(
                f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}"
            )
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.betas must be two numbers in [0, 1), got {self.betas}")
        if not 1 <= self.grad_accum <= self.batch_size:
            raise ConfigError(
                f"train.grad_accum must be in [1, batch_size = {self.batch_size}] (it splits "
                f"a step's rows into micro-batches), got {self.grad_accum}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"train.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"
            )
        if self.nonmono < 1:
            raise ConfigError(f"train.nonmono must be >= 1, got {self.nonmono}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"train.dtype must be one of {DTYPES}, got {self.dtype!r}")


@dataclass
class LogConfig:
    """What a run writes for people to watch, besides metrics.jsonl (always written).

    tensorboard: also write TensorBoard event files into DIR/tensorboard/ (the writer only;
    needs ``pip install tensorboard``). Off by default: metrics.jsonl and ``statewise plot``
    need nothing extra installed, and the event files duplicate what metrics.jsonl holds.
    """

    tensorboard: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.tensorboard, bool):
            raise ConfigError(f"log.tensorboard must be true or false, got {self.tensorboard!r}")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "log": LogConfig}


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a TOML run config and apply ``section.key=value`` overrides."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    return parse_config(p.read_bytes(), str(p), overrides)


def parse_config(data: bytes, source: str, overrides: list[str] = ()) -> RunConfig:
    """A run config from the bytes of a TOML file; ``source`` names it in errors."""
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{source}: not valid TOML: {err}") from None
    for item in overrides:
        apply_override(raw, item)
    return config_from_dict(raw, source=source)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``raw[section][key]`` from ``"section.key=value"`` (value parsed as TOML); a
    longer dotted key reaches into a table: ``model.layer_kwargs.n_heads=2``."""
    key, sep, value = item.partition("=")
    path = key.split(".")
    if not sep or len(path) < 2 or not all(path):
        raise ConfigError(f"override {item!r} must look like section.key=value")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # a bare word is a string: --model.layer=retnet
    table = raw
    for depth, name in enumerate(path[:-1]):
        table = table.setdefault(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(path[: depth + 1])} is not a table")
    table[path[-1]] = parsed


def config_from_dict(raw: dict[str, Any], source: str = "config") -> RunConfig:
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown section [{unknown[0]}]; sections are {', '.join(SECTIONS)}"
        )
    sections = {name: raw.get(name, {}) for name in SECTIONS}
    for section, values in sections.items():  # every key and type first, then the values
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        _check_keys(SECTIONS[section], values, section, source)
    return RunConfig(
        **{name: _build(SECTIONS[name], values, source) for name, values in sections.items()}
    )


def _check_keys(cls: type, values: dict[str, Any], section: str, source: str) -> None:
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(
                f"{source}: unknown key {section}.{key}; the keys of "
                f"[{section}] are {', '.join(f.name for f in dataclasses.fields(cls))}"
            )
        _check_type(value, hints[key], f"{section}.{key}", source)


def _build(cls: type, values: dict[str, Any], source: str) -> Any:
    hints = typing.get_type_hints(cls)
    try:
        return cls(**{k: (float(v) if hints[k] is float else v) for k, v in values.items()})
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from None


def _check_type(value: Any, hint: Any, key: str, source: str) -> None:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        ok = any(_matches(value, h) for h in typing.get_args(hint))
    else:
        ok = _matches(value, hint)
    if not ok:
        name = getattr(hint, "__name__", str(hint))
        raise ConfigError(f"{source}: {key} must be {name}, got {type(value).__name__} {value!r}")


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint) or hint
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(item is Any or _matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is Any:
        return True
    return isinstance(value, origin)
