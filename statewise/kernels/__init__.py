"""Compiled CPU kernels, and the choice between them and their pure-PyTorch twins.

Every fast path in statewise has a twin written in plain PyTorch that computes the same
function; the twin is the reference the kernel is tested against and the path used when
the kernel's backend is missing. The backend is chosen once per call site through
:func:`current`:

- ``STATEWISE_BACKEND=auto`` (the default): ``numba`` when it imports, else ``torch``.
- ``STATEWISE_BACKEND=torch``: the pure-PyTorch twins only.
- ``STATEWISE_BACKEND=numba``: the numba kernels; an error if numba is missing.

:func:`use` overrides the choice inside a ``with`` block (the test harness runs every
layer under every backend this way). Kernels run on CPU tensors only; anything else
(CUDA tensors, dtypes a kernel does not cover) takes the twin whatever the backend.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
from collections.abc import Iterator

from statewise.errors import ArgumentError

BACKENDS = ("torch", "numba")
_ENV = "STATEWISE_BACKEND"
_override: list[str] = []


def _numba_pool_follows_omp() -> None:
    """numba sizes its thread pool once, when it is imported, from NUMBA_NUM_THREADS
    (default: every core), and ignores OMP_NUM_THREADS. A pool larger than the process's
    share of the cores slows every process on a shared machine: with two training processes
    on 2 cores, mamba's step took 2.5x as long as with NUMBA_NUM_THREADS=1. So a process
    told OMP_NUM_THREADS=N gets a numba pool of N too, unless NUMBA_NUM_THREADS is set, or
    numba was imported first: its config is read by then, and a different value in the
    environment makes numba's next compile fail ("Cannot set NUMBA_NUM_THREADS to a
    different value once the threads have been launched")."""
    if "numba" in sys.modules:
        return
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0 and "NUMBA_NUM_THREADS" not in os.environ:
        os.environ["NUMBA_NUM_THREADS"] = omp


_numba_pool_follows_omp()


@functools.cache
def numba_available() -> bool:
    """True when numba is importable (it is not imported here)."""
    return importlib.util.find_spec("numba") is not None


def available() -> tuple[str, ...]:
    """The backends that can run on this installation, ``"torch"`` first."""
    return ("torch", "numba") if numba_available() else ("torch",)


def _check(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ArgumentError(f"{source} must be one of {('auto',) + BACKENDS}, got {name!r}")
    if name not in available():
        raise RuntimeError(
            f"{source}={name!r} but {name} is not installed; install it or use "
            f"{_ENV}=torch (the pure-PyTorch path)"
        )
    return name


def current() -> str:
    """The backend in force: the innermost :func:`use`, else ``$STATEWISE_BACKEND``, else auto."""
    if _override:
        return _override[-1]
    name = os.environ.get(_ENV, "auto").strip().lower() or "auto"
    if name == "auto":
        return available()[-1]
    return _check(name, _ENV)


@contextlib.contextmanager
def use(name: str) -> Iterator[str]:
    """Run the block with backend ``name`` (``"torch"`` or ``"numba"``; ``"auto"`` allowed)."""
    resolved = available()[-1] if name == "auto" else _check(name, "backend")
    _override.append(resolved)
    try:
        yield resolved
    finally:
        _override.pop()
