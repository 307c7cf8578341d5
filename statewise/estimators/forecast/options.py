"""The Forecaster's constructor options: checked, defaults resolved, JSON-able.

Resolved defaults: ``loss=None`` is "studentt" (a probabilistic forecast by default) for
trained networks and "normal" (Gaussian intervals from the training residuals) for
seasonal naive and ridge; ``subtract_last=None`` is ``not revin`` (the two are alternative
per-window normalisations); ``patch_stride=None`` is ``patch_len`` (patches side by side).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from statewise import layers
from statewise.errors import ArgumentError, ArgumentTypeError
from statewise.estimators.forecast.frame import DS, ID, Y
from statewise.estimators.forecast.losses import LOSSES, check_levels
from statewise.estimators.forecast.training import BUILT_IN, CLOSED_FORM, model_config
from statewise.tasks.forecast import SCALERS

MODES = ("channel_mixing", "channel_independent")


def _positive_int(name: str, value: Any, zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero else 1):
        kind = "a non-negative" if zero else "a positive"
        raise ArgumentError(f"{name} must be {kind} int, got {value!r}")
    return value


def _positive_number(name: str, value: Any, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ArgumentError(
            f"{name} must be a finite number > {'=' if zero else ''}0, got {value!r}"
        )
    return float(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be True or False, got {value!r}")
    return value


def _names(name: str, value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ArgumentTypeError(f"{name} must be a list of column names, got {value!r}")
    if not all(isinstance(v, str) for v in value) or len(set(value)) != len(value):
        raise ArgumentError(f"{name} must hold distinct column names (str), got {value!r}")
    reserved = [v for v in value if v in (ID, DS, Y)]
    if reserved:
        raise ArgumentError(
            f"{name} cannot hold {reserved}: unique_id, ds and y are not covariates"
        )
    return list(value)


def check_h(h: Any, horizon: int) -> int:
    """The forecast length: ``h`` in [1, horizon], or horizon for None."""
    if h is None:
        return horizon
    if isinstance(h, bool) or not isinstance(h, int) or not 1 <= h <= horizon:
        raise ArgumentError(f"h must be an int in [1, horizon = {horizon}], got {h!r}")
    return h


def _check_model_kwargs(o: dict[str, Any]) -> None:
    """Build the network's ModelConfig now, so that a bad ``**model_kwargs`` (an unknown
    field, a NaN dropout) fails at construction rather than at ``fit``."""
    try:
        model_config(o, n_targets=1)
    except TypeError as err:
        raise ArgumentError(
            f"{err}; the Forecaster's extra keyword arguments are ModelConfig fields "
            "(dropout, mlp, norm, layer_kwargs, ...)"
        ) from None


def forecaster_options(**given: Any) -> dict[str, Any]:
    """Every constructor option, checked, with its default resolved (see the module doc)."""
    o = dict(given)
    layer = o["layer"]
    if layer not in BUILT_IN and layer not in layers.names():
        raise ArgumentError(
            f"layer must be a registered layer ({', '.join(layers.names())}) or one of "
            f"{BUILT_IN}, got {layer!r}"
        )
    for name in ("input_len", "horizon", "d_model", "n_layers", "batch_size", "moving_avg"):
        _positive_int(name, o[name])
    for name in ("patch_len", "series_embedding_dim"):
        _positive_int(name, o[name], zero=True)
    _positive_int("seed", o["seed"], zero=True)
    o["lr"] = _positive_number("lr", o["lr"])
    o["weight_decay"] = _positive_number("weight_decay", o["weight_decay"], zero=True)
    o["ridge_lam"] = _positive_number("ridge_lam", o["ridge_lam"], zero=True)
    if o["loss"] is None:
        o["loss"] = "normal" if layer in CLOSED_FORM else "studentt"
    if o["loss"] not in LOSSES:
        raise ArgumentError(f"loss must be one of {LOSSES}, got {o['loss']!r}")
    if layer in CLOSED_FORM and o["loss"] not in ("normal", "mse"):
        raise ArgumentError(f"layer={layer!r} gives loss 'normal' or 'mse', got {o['loss']!r}")
    o["levels"] = list(check_levels(o["levels"], "levels"))
    if o["scaler"] not in SCALERS:
        raise ArgumentError(f"scaler must be one of {SCALERS}, got {o['scaler']!r}")
    if o["mode"] not in MODES:
        raise ArgumentError(f"mode must be one of {MODES}, got {o['mode']!r}")
    for name in ("revin", "calendar", "linear_skip"):
        _flag(name, o[name])
    if o["linear_skip"] and o["loss"] == "negbin":
        raise ArgumentError(
            "linear_skip adds a linear forecast to a location in the window's units; "
            "loss='negbin' has none (its mean is a softplus in the units of the counts)"
        )
    if o["subtract_last"] is None:
        o["subtract_last"] = not o["revin"]
    if _flag("subtract_last", o["subtract_last"]) and o["revin"]:
        raise ArgumentError("revin=True and subtract_last=True are alternatives; choose one")
    if o["patch_len"] > o["input_len"]:
        raise ArgumentError(f"patch_len must be <= input_len, got {o['patch_len']}")
    if o["patch_stride"] is None:
        o["patch_stride"] = o["patch_len"]
    elif o["patch_len"] == 0 and o["patch_stride"] != 0:
        raise ArgumentError("patch_stride needs patch_len > 0")
    elif o["patch_len"] > 0:
        _positive_int("patch_stride", o["patch_stride"])
    for name in ("futr_exog_list", "hist_exog_list", "stat_exog_list"):
        o[name] = _names(name, o[name])
    shared = set(o["futr_exog_list"]) & set(o["hist_exog_list"])
    if shared:
        raise ArgumentError(
            f"columns {sorted(shared)} are in both futr_exog_list and hist_exog_list"
        )
    if o["season_length"] is not None:
        _positive_int("season_length", o["season_length"])
    if o["freq"] is not None and not isinstance(o["freq"], (str, int)):
        o["freq"] = getattr(o["freq"], "freqstr", o["freq"])
        if not isinstance(o["freq"], str):
            raise ArgumentTypeError(
                f"freq must be a pandas frequency string or an int, got {o['freq']!r}"
            )
    if o["alias"] is not None and (not isinstance(o["alias"], str) or not o["alias"]):
        raise ArgumentError(f"alias must be a non-empty str, got {o['alias']!r}")
    if layer not in BUILT_IN:
        _check_model_kwargs(o)
        return o
    uses = [n for n in ("futr_exog_list", "hist_exog_list", "stat_exog_list") if o[n]]
    uses += sorted(o["model_kwargs"])
    uses += ["series_embedding_dim"] if o["series_embedding_dim"] else []
    uses += ["patch_len"] if o["patch_len"] else []
    uses += ["linear_skip"] if o["linear_skip"] else []
    if uses:
        raise ArgumentError(f"layer={layer!r} reads the target only; it takes no {uses}")
    return o
