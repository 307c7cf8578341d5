"""statewise's exception types for bad input.

Every error a user can cause and fix (a config, a checkpoint, a data file, an argument)
is an ``InputError``. Each type also subclasses ``ValueError`` or ``TypeError``, so code
that catches those keeps working. The CLI prints an ``InputError`` (or an ``OSError``) as
one line with exit code 2; any other exception is a bug in statewise: exit code 1 and the
traceback.
"""

from __future__ import annotations

import dataclasses
import math


class InputError(Exception):
    """Input that statewise cannot use; the message names the argument, key or file."""


class ArgumentError(InputError, ValueError):
    """An argument (Python or command line) with a value out of range."""


class ArgumentTypeError(InputError, TypeError):
    """An argument of the wrong type."""


class NonFiniteError(ArgumentError):
    """A tensor holding NaN or inf where finite values are required (a layer's input, or
    its output when a finite input overflowed)."""


class ConfigError(InputError, ValueError):
    """A config file or override that cannot be used; the message names the key."""


class CheckpointError(InputError, ValueError):
    """A checkpoint or saved-model directory that is missing, incomplete, corrupt, or does
    not fit its config."""


class DataError(InputError, ValueError):
    """Data (a text file, a series, an array) that cannot be used for the task."""


class RunLockedError(InputError, OSError):
    """An output directory that another statewise process is writing."""


class TrainingDiverged(RuntimeError):
    """A non-finite loss, gradient norm, weight or activation: the run stopped before
    taking that step, its last good checkpoint kept.

    Not an ``InputError``: the input was valid, the optimisation failed (the usual fix is
    a lower learning rate). ``step`` is the step that met the non-finite value.
    """

    def __init__(self, step: int, what: str, value: float | str) -> None:
        self.step, self.what, self.value = step, what, value
        super().__init__(
            f"training diverged at step {step}: {what} is {value} "
            "(try a lower learning rate or gradient clipping)"
        )


def finite_number(name: str, value: object) -> float:
    """``value`` as a float if it is a finite real number (not a bool), else an error
    naming ``name``: NaN passes every ``<``/``<=`` range check, so ranges alone admit it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ArgumentError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_finite_fields(config: object, section: str) -> None:
    """ConfigError naming ``section.field`` for a NaN or infinite float in a dataclass
    config (in a field or a list field). In a table of arguments handed on to a layer
    (``layer_kwargs``) NaN is refused and inf is left to the layer, which may give it a
    meaning (mamba2's ``dt_limit = [0.0, inf]``: no upper limit) or refuse it."""

    def check(value: object, key: str, allow_inf: bool) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            if math.isnan(value) or not allow_inf:
                raise ConfigError(f"{key} must be a finite number, got {value}")
        if isinstance(value, (list, tuple)):
            for item in value:
                check(item, key, allow_inf)
        if isinstance(value, dict):
            for name, item in value.items():
                check(item, f"{key}.{name}", True)

    for f in dataclasses.fields(config):
        check(getattr(config, f.name), f"{section}.{f.name}", False)


def check_caps(config: object, section: str, caps: dict[str, int]) -> None:
    """ConfigError for a size above its cap: the caps are far above any model this library
    trains on one machine and stop a typo (an extra zero or two) from allocating
    terabytes before anything else is checked."""
    for name, cap in caps.items():
        value = getattr(config, name)
        if isinstance(value, (int, float)) and value > cap:
            raise ConfigError(f"{section}.{name} must be <= {cap:,}, got {value:,}")
