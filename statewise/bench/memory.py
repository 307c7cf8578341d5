"""Resident memory over one long stream of ``step`` calls: does a layer leak, or plateau?

    python -m statewise.bench.memory lru --steps 1000,10000,100000 --backend both

One stream per backend at batch 1 and d_model 256 (the shape of ``bench targets``), under
``no_grad``, outputs dropped, the inputs 64 random tokens indexed in turn (so the harness
holds O(1) memory). After 8 warm-up steps the allocator is set up as for ``peak_mb``
(:func:`statewise.bench.speed.prepare_memory_measurement`: freed memory goes back to the
OS), then ``gc``, ``malloc_trim`` and a peak reset. At each checkpoint it prints, against
the RSS after the warm-up: the RSS now, the peak RSS since the previous checkpoint (MiB),
the live ``torch.Tensor`` objects (``gc``; counted after the RSS is read, then the heap is
trimmed and the peak reset again, so the count's own list does not read as growth) and,
with ``--tracemalloc``, the Python heap that tracemalloc sees (KiB; it slows each step
several times). A leak grows linearly with the steps; a plateau does not. Linux only
(``/proc/self/status``).
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc

import torch

from statewise import kernels, layers
from statewise.bench import speed

INPUTS = 64
WARMUP = 8


def _live_tensors() -> int:
    # type(), not isinstance(): the latter reads __class__, which warns on deprecated proxies
    return sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects())


def _trim_and_reset_peak() -> None:
    gc.collect()
    speed._LIBC.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS


def stream_memory(
    name: str, checkpoints: list[int], d_model: int = 256, trace: bool = False
) -> list[dict]:
    """One stream of max(checkpoints) steps of layer ``name`` under the current backend;
    one row per checkpoint (see the module docstring)."""
    if not speed.prepare_memory_measurement():
        raise OSError("peak RSS cannot be read here (needs Linux /proc and glibc)")
    torch.manual_seed(0)
    layer = layers.get(name, d_model)
    xs = torch.randn(INPUTS, 1, d_model)
    rows = []
    with torch.no_grad():
        state = layer.init_state(1)
        for i in range(WARMUP):
            _, state = layer.step(xs[i % INPUTS], state)
        start_tensors = _live_tensors()
        _trim_and_reset_peak()
        before = speed._status_bytes("VmRSS")
        if trace:
            tracemalloc.start()
        start, done = time.perf_counter(), 0
        for mark in sorted(set(checkpoints)):
            for i in range(done, mark):
                _, state = layer.step(xs[i % INPUTS], state)
            done = mark
            row = {
                "steps": done,
                "rss_mb": (speed._status_bytes("VmRSS") - before) / 2**20,
                "peak_mb": (speed._status_bytes("VmHWM") - before) / 2**20,
                "seconds": time.perf_counter() - start,
            }
            if trace:
                row["traced_kb"] = tracemalloc.get_traced_memory()[0] / 2**10
            row["tensors"] = _live_tensors()
            row["tensors_at_start"] = start_tensors
            rows.append(row)
            _trim_and_reset_peak()
        if trace:
            tracemalloc.stop()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m statewise.bench.memory", description=__doc__)
    parser.add_argument("layer", help="a registered layer")
    parser.add_argument("--steps", default="1000,10000,100000", help="checkpoints, A,B,...")
    parser.add_argument("--backend", default=None, choices=("torch", "numba", "both"))
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--tracemalloc", action="store_true", help="also trace the Python heap")
    args = parser.parse_args(argv)
    checkpoints = [int(v) for v in args.steps.split(",")]
    for backend in speed.resolve_backends(args.backend):
        with kernels.use(backend):
            rows = stream_memory(args.layer, checkpoints, args.d_model, args.tracemalloc)
        for row in rows:
            traced = f"  traced {row['traced_kb']:7.1f} KiB" if "traced_kb" in row else ""
            print(
                f"{args.layer} [{backend}] {row['steps']:>9,} steps: "
                f"RSS {row['rss_mb']:+.2f} MiB, peak since last {row['peak_mb']:+.2f} MiB, "
                f"live tensors {row['tensors_at_start']} -> {row['tensors']}{traced} "
                f"({row['seconds']:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
