"""First-call cost of the numba kernels (compile, or load from numba's on-disk cache).

Run twice with a fresh cache directory, cold then warm:

    NUMBA_CACHE_DIR=/tmp/numba-cache python benchmarks/jit_time.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

START = time.perf_counter()

import torch  # noqa: E402  (timed: the import cost is part of what this measures)

from statewise import kernels  # noqa: E402
from statewise.ops.scan import linear_recurrence_loop  # noqa: E402
from statewise.ops.selective_scan import selective_scan  # noqa: E402


def first(label: str, fn: Callable[[], object]) -> None:
    start = time.perf_counter()
    fn()
    print(f"{label}: {time.perf_counter() - start:.2f} s")


def main() -> None:
    print(f"import torch+statewise {time.perf_counter() - START:.2f} s (numba not yet imported)")
    a = torch.rand(2, 8, 4, requires_grad=True)
    b = torch.rand(2, 8, 4)
    x = torch.rand(2, 8, 4, requires_grad=True)
    A = -torch.rand(4, 3)
    Bm = torch.rand(2, 8, 3)
    with kernels.use("numba"):
        first(
            "scan float32 forward (numba import + first kernel)",
            lambda: linear_recurrence_loop(a, b),
        )
        first("scan float32 backward", lambda: linear_recurrence_loop(a, b).sum().backward())
        first(
            "scan float64 forward+backward",
            lambda: linear_recurrence_loop(a.double(), b.double()).sum().backward(),
        )
        first(
            "scan complex64 forward+backward",
            lambda: linear_recurrence_loop(a.cfloat(), b.cfloat()).abs().sum().backward(),
        )
        first(
            "selective scan float32 forward+backward",
            lambda: selective_scan(x, x.detach().abs(), A, Bm, Bm)[0].sum().backward(),
        )


if __name__ == "__main__":
    main()
