"""Arena cells as Ray tasks (``statewise arena --executor ray``; the optional extra
``statewise[ray]``).

Each cell is one Ray task that asks for as many CPUs as it runs torch threads, with the
thread variables (OMP, MKL, numba) set to that number in its worker, as the local
executor's worker processes have them; so with ``--steps`` a cell computes the same numbers
as a local cell of the same threads, bit for bit. The driver (the ``statewise arena``
process, holding the run directory's lock) receives each result and stores it: Ray only
computes.

Without an address a Ray instance is started on this machine, sized to its CPUs, bound to
the loopback interface and with Ray's usage statistics off, and it is shut down when the
arena ends. With an address (``ray start --head`` printed it) the driver joins that cluster
and only disconnects at the end. A Ray already initialised in this process (by the caller)
is used as it is and left running.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

from statewise.errors import ArgumentError

INSTALL = "pip install 'statewise[ray]'"
# read when ray is imported: "0" makes a local Ray bind to 127.0.0.1 instead of the
# machine's address (Ray's own setting for single-machine use on macOS and Windows)
LOOPBACK_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOCAL_VARIABLES = {LOOPBACK_VARIABLE: "0", "RAY_USAGE_STATS_ENABLED": "0"}


def ray_available() -> bool:
    """Is the ray package installed (without importing it)?"""
    return importlib.util.find_spec("ray") is not None


def _import_ray() -> Any:
    if not ray_available():
        raise ArgumentError(f"statewise arena: --executor ray needs Ray, not installed: {INSTALL}")
    import ray

    return ray


@contextlib.contextmanager
def environment(values: dict[str, str], override: bool = False) -> Iterator[None]:
    """``values`` set in os.environ for the block (without ``override``, only where the
    user has not set them), and os.environ as it was afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if override:
            os.environ[name] = value
        else:
            os.environ.setdefault(name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def start_local_ray(num_cpus: int | None = None) -> Any:
    """Start a Ray instance on this machine with ``num_cpus`` CPUs (default: all of them),
    no dashboard, bound to 127.0.0.1 when this call is the first import of ray in the
    process, usage statistics off; returns the ray module. The caller shuts it down."""
    with environment(LOCAL_VARIABLES), _signal_handlers_kept():  # the processes inherit them
        ray = _import_ray()
        ray.init(
            num_cpus=num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            configure_logging=False,
        )
    return ray


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """ray.init installs SIGTERM (and SIGINT) handlers of its own in the driver; the
    arena's (SIGTERM as an interrupt: cells cancelled, the lock released) are put back."""
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in kept.items():
            if handler is not None:
                signal.signal(sig, handler)


def _cell_in_worker(threads: int, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """Runs in a Ray worker: ``fn(*args, **kwargs)`` with ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    return fn(*args, **kwargs)


class RayExecutor(Executor):
    """Submits each call as a Ray task of ``threads`` CPUs whose worker has the thread
    variables ``env`` set; the returned Future holds the call's result or its own
    exception (a Ray failure with no Python cause, such as a worker that died, becomes
    a RuntimeError: the arena's 'failed, retried on a rerun')."""

    def __init__(self, ray: Any, threads: int, env: dict[str, str]) -> None:
        self._ray = ray
        self._remote = ray.remote(_cell_in_worker).options(
            num_cpus=threads, runtime_env={"env_vars": env}
        )
        self.threads = threads
        self.pending: list[Any] = []

    def submit(self, fn, /, *args, **kwargs) -> Future:  # type: ignore[override]
        ref = self._remote.remote(self.threads, fn, args, kwargs)
        self.pending.append(ref)
        out: Future = Future()
        out.set_running_or_notify_cancel()

        def settle(done: Future) -> None:
            if ref in self.pending:
                self.pending.remove(ref)
            err = done.exception()
            if err is None:
                out.set_result(done.result())
            else:
                out.set_exception(self._unwrap(err))

        ref.future().add_done_callback(settle)
        return out

    def _unwrap(self, err: BaseException) -> BaseException:
        """The exception a cell raised, or a RuntimeError for a Ray failure."""
        cause = getattr(err, "cause", None)
        if isinstance(err, self._ray.exceptions.RayTaskError) and isinstance(cause, Exception):
            return cause
        if isinstance(err, self._ray.exceptions.RayError):
            lines = str(err).strip().splitlines()
            return RuntimeError(f"ray: {lines[0] if lines else type(err).__name__}")
        return err

    def cancel_pending(self) -> None:
        """Stop the tasks not finished: queued ones never start, running ones are killed."""
        for ref in list(self.pending):
            with contextlib.suppress(Exception):
                self._ray.cancel(ref, force=True)
        self.pending.clear()


def _on_loopback(address: str) -> bool:
    """Is ``address`` (host:port) on this machine's loopback interface?"""
    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _largest_node_cpus(ray: Any) -> float:
    return max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)


@contextlib.contextmanager
def ray_executor(
    threads: int,
    env: dict[str, str],
    address: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Iterator[tuple[RayExecutor, int]]:
    """A RayExecutor of ``threads`` CPUs per cell and how many cells fit on the cluster at
    once (its CPUs // threads). Starts a local Ray (``address`` None) or joins the cluster
    at ``address``, unless ray is already initialised here; shuts down what it started. An
    interrupted arena (Ctrl-C, an error) cancels the cells still queued or running."""
    # a local Ray binds to loopback only if ray is first imported with LOCAL_VARIABLES set;
    # so must a driver that joins a cluster on loopback, or it seeks the GCS at the
    # machine's address and waits for ever
    loopback = address is None or _on_loopback(address)
    with environment(LOCAL_VARIABLES) if loopback else contextlib.nullcontext():
        ray = _import_ray()
    started = not ray.is_initialized()
    if started and address is None:
        start_local_ray()
    elif started:
        try:
            with _signal_handlers_kept():
                ray.init(address=address, configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ArgumentError(
                f"statewise arena: cannot join the Ray cluster at --address {address}: {message}"
            ) from None
    try:
        largest = _largest_node_cpus(ray)
        if largest < threads:
            raise ArgumentError(
                f"statewise arena: each cell asks for {threads} CPUs and the largest node of "
                f"the Ray cluster has {largest:g}; choose --threads-per-cell <= {largest:g}"
            )
        total = ray.cluster_resources().get("CPU", 0.0)
        slots = max(1, int(total // threads))
        if log is not None:
            where = "a local Ray" if address is None else f"the Ray cluster at {address}"
            log(
                f"ray: {where}, {total:g} CPUs: cells of {threads} thread(s), up to {slots} at once"
            )
        pool = RayExecutor(ray, threads, env)
        try:
            yield pool, slots
        except BaseException:
            pool.cancel_pending()
            raise
    finally:
        if started:
            ray.shutdown()
