"""This machine's own limits: measured fp32 GEMM throughput and memory bandwidth.

Speed results are reported as fractions of these numbers, measured in the same process
just before the benchmark, so a loaded or throttled machine lowers both sides alike.

- GEMM: ``torch.mm`` of two square fp32 matrices (n = 512, 1024, 2048), 2 n^3 FLOPs each;
  the median time per size after one warm-up, and the best size's GFLOP/s as the peak.
- Bandwidth: a large fp32 tensor (64 Mi floats, 256 MiB) copied into another
  (``dst.copy_(src)``, 2 x 256 MiB moved) and added into a third
  (``torch.add(a, b, out=c)``, 3 x 256 MiB moved); the median of each, the larger as the
  machine's bandwidth. Both are far larger than any cache.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

import torch

SLOW_CALL_S = 5.0  # a call slower than this is timed once


@dataclass
class Machine:
    """Measured limits; ``details`` keeps every individual measurement."""

    gemm_gflops: float
    bandwidth_gbs: float
    threads: int
    torch_version: str
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def median_seconds(
    fn: Callable[[], object], repeats: int, warmup: int = 1, budget_s: float = SLOW_CALL_S
) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls. After a
    warm-up call slower than ``budget_s``, a single timed call is the sample, so one very
    slow peer cannot stall the run; the warm-up itself is never a sample, as it holds the
    one-time costs (lazy initialisation, a numba kernel's compilation or cache load)."""
    for _ in range(warmup):
        start = time.perf_counter()
        fn()
        if time.perf_counter() - start > budget_s:
            repeats = 1
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_gemm(sizes: tuple[int, ...] = (512, 1024, 2048), budget_s: float = 2.0) -> dict:
    """GFLOP/s of fp32 square matmuls per size; about ``budget_s`` seconds in all."""
    out = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        c = torch.empty(n, n)
        matmul = partial(torch.mm, a, b, out=c)
        once = median_seconds(matmul, repeats=1)
        repeats = max(3, min(50, int(budget_s / len(sizes) / max(once, 1e-6))))
        seconds = median_seconds(matmul, repeats=repeats, warmup=0)
        out[n] = 2 * n**3 / seconds / 1e9
    return out


def measure_bandwidth(numel: int = 64 * 2**20, repeats: int = 7) -> dict:
    """GB/s of a copy (2 x bytes moved) and an add (3 x bytes moved) of fp32 tensors."""
    a = torch.rand(numel)
    b = torch.rand(numel)
    c = torch.empty(numel)
    nbytes = a.element_size() * numel
    copy_s = median_seconds(lambda: c.copy_(a), repeats=repeats)
    add_s = median_seconds(lambda: torch.add(a, b, out=c), repeats=repeats)
    return {"copy": 2 * nbytes / copy_s / 1e9, "add": 3 * nbytes / add_s / 1e9}


def measure_machine(quick: bool = False) -> Machine:
    """Measure this machine; ``quick`` uses small sizes (for tests, well under a second)."""
    if quick:
        gemm = measure_gemm(sizes=(256,), budget_s=0.1)
        bandwidth = measure_bandwidth(numel=2**22, repeats=3)
    else:
        gemm = measure_gemm()
        bandwidth = measure_bandwidth()
    return Machine(
        gemm_gflops=max(gemm.values()),
        bandwidth_gbs=max(bandwidth.values()),
        threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        details={
            "gemm_gflops_by_n": {str(k): v for k, v in gemm.items()},
            "bandwidth_gbs_by_op": bandwidth,
            "quick": quick,
        },
    )
