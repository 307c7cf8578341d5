"""Which decode step the engine runs at each batch size: the fused one (numba kernels,
statewise.infer.fused) or the batched PyTorch ``model.step``.

The fused step reads each weight once per call and runs every row's dot products on
their own, so at batch 1 it moves little more than the weights (PyTorch's step at batch 1
is dominated by per-op dispatch); with many rows PyTorch's GEMMs, blocked over rows, do
the arithmetic faster. ``"auto"`` times both on the model itself, at batch sizes 1, 2,
4, ... up to ``max_batch``, and runs the fused step up to the largest size at which it
was faster at that size and every smaller one (the crossover); ``"fused"`` runs it at
every size (a request's tokens are then the same alone or among others, in float32
too); ``"torch"`` never does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from statewise import kernels
from statewise.errors import ArgumentError
from statewise.models import LanguageModel

DECODE_MODES = ("auto", "fused", "torch")
CALIBRATION_REPEATS = 3


@dataclass
class DecodePath:
    """``fused`` (a FusedDecoder or None) runs every decode step of up to ``fused_max_batch``
    rows; ``timings`` holds what "auto" measured: batch -> (fused ms, torch ms)."""

    mode: str
    fused: object = None
    fused_max_batch: int = 0
    reason: str = ""
    timings: dict[int, tuple[float, float]] = field(default_factory=dict)

    def uses_fused(self, rows: int) -> bool:
        return self.fused is not None and rows <= self.fused_max_batch

    def describe(self) -> str:
        if self.fused is None:
            return f"decode: PyTorch step ({self.reason})"
        if self.mode == "fused":
            return "decode: fused step at every batch size"
        return (
            f"decode: fused step up to batch {self.fused_max_batch}, PyTorch above "
            f"(measured at start: {self.reason})"
        )


def choose_decode_path(model: LanguageModel, mode: str, max_batch: int) -> DecodePath:
    """The decode path for ``mode`` (see the module doc); "fused" on a model that cannot
    run fused is an ArgumentError naming the reason, "auto" falls back to PyTorch."""
    if mode not in DECODE_MODES:
        raise ArgumentError(f"decode must be one of {DECODE_MODES}, got {mode!r}")
    if mode == "torch":
        return DecodePath(mode, reason="decode='torch'")
    reason = _why_not(model)
    if reason is not None:
        if mode == "fused":
            raise ArgumentError(f"decode='fused' is not possible: {reason}")
        return DecodePath(mode, reason=reason)
    from statewise.infer.fused import FusedDecoder

    fused = FusedDecoder(model)
    if mode == "fused":
        return DecodePath(mode, fused, max_batch)
    return _calibrated(model, fused, max_batch)


def _why_not(model: LanguageModel) -> str | None:
    if not kernels.numba_available():
        return "numba is not installed"
    if kernels.current() == "torch":
        return "the torch backend is in force (STATEWISE_BACKEND)"
    from statewise.infer.fused import why_not_fusable

    return why_not_fusable(model)


def _calibrated(model: LanguageModel, fused, max_batch: int) -> DecodePath:
    path = DecodePath("auto", fused)
    sizes = sorted({min(2**i, max_batch) for i in range(max_batch.bit_length() + 1)})
    for rows in sizes:
        fused_ms, torch_ms = _time_both(model, fused, rows)
        path.timings[rows] = (fused_ms, torch_ms)
        if fused_ms > torch_ms:
            break
        path.fused_max_batch = rows
    measured = ", ".join(f"batch {b}: {f:.2f} vs {t:.2f} ms" for b, (f, t) in path.timings.items())
    path.reason = measured
    if path.fused_max_batch == 0:
        path.fused = None
        path.reason = f"slower than PyTorch at batch 1 here ({measured})"
    return path


def _time_both(model: LanguageModel, fused, rows: int) -> tuple[float, float]:
    """ms of one decode step of ``rows`` rows, fused and PyTorch, each call from a fresh
    initial state (stepping one state again and again would fill a global attention's KV
    cache)."""
    param = next(model.parameters())
    ids = torch.zeros(rows, dtype=torch.long, device=param.device)

    def fresh() -> list:
        return model.init_state(rows, param.device, param.dtype)

    fused_ms = _median_ms(lambda: fused.step(ids, fresh(), in_place=True))
    return fused_ms, _median_ms(lambda: model.step(ids, fresh()))


@torch.no_grad()
def _median_ms(run) -> float:
    run()  # warm-up: numba compiles (or loads from its cache) on the first call
    times = []
    for _ in range(CALIBRATION_REPEATS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3
