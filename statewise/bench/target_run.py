"""``statewise bench targets``: run exactly the measurements the target table needs, in one
process, and judge them (targets.py holds the table and the judging).

Every distinct :class:`~statewise.bench.targets.Job` runs once, whatever number of targets
reads it (mingru-pytorch's time serves all five diagonal layers; a peer runs once for all
backends). Each timing is the median of ``repeats`` calls after one warm-up call (which
absorbs numba's compilation); after a warm-up slower than ``SLOW_CALL_S`` one call is
timed, which keeps the T = 4096 recurrent baselines to two calls each. Memory jobs run last, after
:func:`~statewise.bench.speed.prepare_memory_measurement` (it slows allocation).

With two backends, ``vs_torch`` lists each of our measurements under numba over the same
under torch (tokens/s, or time torch / time numba for the scan and the step).
"""

from __future__ import annotations

import dataclasses

import torch

from statewise import kernels, layers
from statewise.bench import peers
from statewise.bench.machine import Machine, median_seconds
from statewise.bench.speed import (
    Progress,
    chunk_flops_per_token,
    forward_fn,
    fwd_bwd_fn,
    peak_mb,
    prepare_memory_measurement,
    step_us,
)
from statewise.bench.targets import (
    DEFAULT_SHAPES,
    Job,
    Shapes,
    Target,
    build_targets,
    evaluate,
)
from statewise.ops.scan import linear_recurrence

SLOW_CALL_S = 2.0


def build_layer(job: Job) -> layers.SequenceMixer:
    torch.manual_seed(0)
    return layers.get(job.layer, job.shape.d_model, mode=job.mode, **dict(job.kwargs))


def _layer(job: Job, repeats: int) -> dict:
    layer = build_layer(job)
    x = torch.randn(job.shape.batch, job.shape.seq_len, job.shape.d_model)

    def module(inp: torch.Tensor) -> torch.Tensor:
        return layer(inp)[0]

    tokens = job.shape.tokens
    both = median_seconds(fwd_bwd_fn(module, list(layer.parameters()), x), repeats, 1, SLOW_CALL_S)
    out = {"fwd_bwd_tps": tokens / both, "mode": layer.resolve_mode(job.shape.seq_len)}
    if job.forward:
        fwd = median_seconds(forward_fn(module, x), repeats, 1, SLOW_CALL_S)
        out["forward_tps"] = tokens / fwd
        out["flops_per_token"] = chunk_flops_per_token(
            job.layer, layer, job.shape.seq_len, out["mode"]
        )
    return out


def _peer(job: Job, repeats: int) -> dict:
    ours = build_layer(Job("layer", job.layer, job.shape, kwargs=job.kwargs))
    peer = peers.find_peer(job.layer, job.option)
    return peers.time_peer(peer, ours, job.shape, repeats, SLOW_CALL_S)


def _scan(job: Job, repeats: int) -> dict:
    """h_t = a_t h_{t-1} + b_t over (B, T, S) with |a_t| < 1; 3 B T S itemsize bytes."""
    b, t, s = job.shape.batch, job.shape.seq_len, job.shape.d_model
    torch.manual_seed(0)
    if job.option == "complex64":
        a = torch.polar(torch.rand(b, t, s), 6.283 * torch.rand(b, t, s))
        x = torch.randn(b, t, s, dtype=torch.complex64)
    else:
        a, x = torch.rand(b, t, s), torch.randn(b, t, s)
    seconds = median_seconds(forward_fn(lambda inp: linear_recurrence(a, inp), x), repeats)
    return {"forward_s": seconds, "bytes": 3 * x.numel() * x.element_size()}


def _step(job: Job, repeats: int) -> dict:
    layer = build_layer(job)
    nbytes = sum(p.numel() * p.element_size() for p in layer.parameters())
    return {"step_s": step_us(layer, job.shape.d_model, repeats) * 1e-6, "param_bytes": nbytes}


MEMORY_INPUTS = 64  # distinct random tokens, taken in turn through a memory job's stream


def _memory(job: Job, repeats: int) -> dict:
    """Peak RSS growth of ``seq_len`` steps at batch 1, outputs dropped (no_grad).

    The harness itself holds O(1) memory: the inputs are MEMORY_INPUTS tokens indexed in
    turn. (Iterating a (T, 1, D) input, as this job once did, unbinds it into T views at
    once, ~540 bytes each: 0.26 MiB per 512 steps that read as the layer's growth.)"""
    layer = build_layer(job)
    xs = torch.randn(MEMORY_INPUTS, 1, job.shape.d_model)

    def steps(n: int) -> None:
        with torch.no_grad():
            state = layer.init_state(1)
            for i in range(n):
                _, state = layer.step(xs[i % MEMORY_INPUTS], state)

    return {"peak_mb": peak_mb(lambda: steps(job.shape.seq_len), warmup=lambda: steps(8))}


RUNNERS = {"layer": _layer, "peer": _peer, "scan": _scan, "step": _step, "memory": _memory}


def run_job(job: Job, repeats: int) -> dict:
    """One job's result; an exception becomes ``{"error": ...}``."""
    try:
        if job.backend is None:
            return RUNNERS[job.kind](job, repeats)
        with kernels.use(job.backend):
            return RUNNERS[job.kind](job, repeats)
    except Exception as err:  # a failure is a result, the run goes on
        return {"error": f"{type(err).__name__}: {err}"}


def unique_jobs(targets: list[Target]) -> list[Job]:
    """The jobs of ``targets`` in table order, each once, memory jobs last."""
    jobs = list(dict.fromkeys(job for t in targets for job in t.jobs))
    return [j for j in jobs if j.kind != "memory"] + [j for j in jobs if j.kind == "memory"]


def backend_ratios(results: dict[Job, dict]) -> list[dict]:
    """Each numba measurement of ours over the same under torch (above 1: numba faster)."""
    keys = {"layer": "fwd_bwd_tps", "scan": "forward_s", "step": "step_s"}
    out = []
    for job, result in results.items():
        if job.backend != "numba" or job.kind not in keys:
            continue
        base = results.get(dataclasses.replace(job, backend="torch"))
        key = keys[job.kind]
        if base is None or key not in base or key not in result:
            continue
        ratio = result[key] / base[key] if job.kind == "layer" else base[key] / result[key]
        out.append({"job": job.label(), "numba_over_torch": ratio})
    return out


def run_targets(
    machine: Machine,
    backends: list[str],
    repeats: int = 3,
    shapes: Shapes = DEFAULT_SHAPES,
    only: tuple[str, ...] | None = None,
    progress: bool = True,
) -> dict:
    """Measure and judge every target under every backend; the JSON-ready result."""
    targets = [t for b in backends for t in build_targets(b, shapes, only)]
    jobs = unique_jobs(targets)
    tick = Progress(len(jobs), progress)
    results: dict[Job, dict] = {}
    memory_ok = False
    for job in jobs:
        if job.kind == "memory" and not memory_ok:
            memory_ok = prepare_memory_measurement()
            if not memory_ok:
                break
        tick(job.label())
        results[job] = run_job(job, repeats)
    limits = {"gemm_gflops": machine.gemm_gflops, "bandwidth_gbs": machine.bandwidth_gbs}
    return {
        "machine": machine.as_dict(),
        "backends": backends,
        "repeats": repeats,
        "targets": evaluate(targets, results, limits),
        "vs_torch": backend_ratios(results),
        "measurements": [{**job.as_dict(), **result} for job, result in results.items()],
    }
