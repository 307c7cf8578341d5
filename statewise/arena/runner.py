"""One arena cell (a layer trained on a task with one seed, its lr sweep included) and the
loop over all cells, which skips cells whose result file already exists (resume).

Training reuses ``statewise.estimators.fit.train_loop`` (AdamW, warm-up + cosine, clipping, a step
count and a wall-clock budget), the metrics ``statewise.train.evaluate``. With a time
budget the step count of a run is planned from three timed passes, so the cosine schedule
ends when the budget does; the budget also stops the run if the plan was optimistic.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import multiprocessing
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    wait,
)
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from statewise.arena.budget import count_params, match_d_model, model_state_floats
from statewise.arena.executors import environment
from statewise.arena.suites import Suite, TaskSpec
from statewise.arena.variants import layer_of, split_entry
from statewise.errors import ArgumentError, NonFiniteError, TrainingDiverged
from statewise.estimators.fit import train_loop
from statewise.models import ModelConfig, build_model
from statewise.tasks.base import unpack_batch
from statewise.tasks.config import DataConfig, build_task
from statewise.train.evaluate import evaluate, evaluate_lengths, mean_over_lengths, token_loss
from statewise.train.optim import diverged_forward

WEIGHT_DECAY = 0.1
TEST_BATCHES = 2  # batches per test length
CURVE_POINTS = 100  # loss-curve points kept per cell
FEW_STEPS = 50  # below this a time-budgeted run has not learned much: say so
FEW_STEPS_NOTE = "; few steps fit the budget: a busy machine or a small --budget-s"
PROBE_STEPS = 3  # timed passes that plan a time-budgeted run
METRICS = ("accuracy", "bits_per_char")  # the task metrics the arena knows how to rank


def cell_name(task: str, layer: str, seed: int) -> str:
    return f"{task}__{layer}__seed{seed}"


def cell_settings(
    suite: Suite, spec: TaskSpec, layer: str, seed: int, budget_s: float | None, steps: int | None
) -> dict[str, Any]:
    """Everything that decides a cell's result; a stored result is reused only if equal."""
    from statewise.layers import info

    return {
        "task": spec.name,
        "data": dict(spec.data),
        "test_lengths": list(spec.test_lengths),
        "headline": spec.headline,
        "layer": layer,
        "seed": seed,
        "params_budget": suite.params,
        "d_model": suite.d_model,
        "budget_s": budget_s,
        "steps": steps,
        "lrs": list(suite.lrs_for(info(layer_of(layer)).family)),
        "n_layers": suite.n_layers,
        "batch_size": suite.batch_size,
        "eval_batches": suite.eval_batches,
    }


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _curve(history: list[dict[str, float]]) -> list[list[float]]:
    """[step, seconds, mean loss] over up to CURVE_POINTS equal bins of the steps."""
    size = max(1, math.ceil(len(history) / CURVE_POINTS))
    out = []
    for i in range(0, len(history), size):
        part = history[i : i + size]
        loss = sum(h["loss"] for h in part) / len(part)
        out.append([part[-1]["step"], round(part[-1]["time_s"], 3), _finite(loss)])
    return out


def _train_run(
    config: ModelConfig,
    task: Any,
    lr: float,
    seed: int,
    suite: Suite,
    budget_s: float | None,
    steps: int | None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train one model at one learning rate; returns it and its validation record, or
    None and a record with ``diverged`` (the step and the non-finite value) if it
    diverged: a non-finite loss, gradient or weight, or activations that overflowed in
    the planning forward, a training step or validation (the layers refuse them)."""
    torch.manual_seed(seed)
    model = build_model(config)
    batch = suite.batch_size
    counter = {"step": 0, "tokens": 0}

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        inputs, targets, resets = unpack_batch(task.train_batch(counter["step"], batch))
        counter["step"] += 1
        counter["tokens"] += inputs.numel()
        return token_loss(model(inputs, resets=resets), targets)

    history: list[dict[str, float]] = []
    try:
        total = steps if steps is not None else _plan_steps(model, task, batch, budget_s)
        train_loop(
            model,
            loss_fn,
            batch * total,  # one "epoch" is the whole run: no validation until the end
            batch_size=batch,
            lr=lr,
            weight_decay=WEIGHT_DECAY,
            seed=seed,
            total=total,
            budget_s=None if steps is not None else budget_s,
            progress=False,
            history=history,
        )
        scores = evaluate(model, task, batch, suite.eval_batches)
    except (TrainingDiverged, NonFiniteError) as err:
        if isinstance(err, NonFiniteError):  # the planning forward or validation overflowed
            err = diverged_forward(counter["step"] + 1, model)
        diverged = {"step": err.step, "what": err.what, "value": str(err.value)}
        return None, {"lr": lr, "steps": err.step - 1, "diverged": diverged}
    seconds = history[-1]["time_s"] if history else 0.0
    record = {
        "lr": lr,
        "steps": counter["step"],
        "tokens": counter["tokens"],
        "train_seconds": round(seconds, 3),
        "tokens_per_s": round(counter["tokens"] / max(seconds, 1e-9), 1),
        **{k: _finite(v) for k, v in scores.items()},
        "loss_curve": _curve(history),
    }
    return model, record


def _plan_steps(model: torch.nn.Module, task: Any, batch: int, budget_s: float) -> int:
    """Steps that fit ``budget_s``, from the median of PROBE_STEPS timed forward/backward
    passes after an untimed one (kernels compile, buffers are allocated). One timed pass
    was not enough: a fresh worker's first passes ran up to 2x slow, and the runs planned
    from them stopped with 40% of their budget unused. The optimizer step is not in the
    probe; the budget stops an optimistic plan."""
    inputs, targets, resets = unpack_batch(task.train_batch(0, batch))
    token_loss(model(inputs, resets=resets), targets).backward()
    times = []
    for _ in range(PROBE_STEPS):
        start = time.perf_counter()
        token_loss(model(inputs), targets).backward()
        times.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return max(1, int(budget_s / max(statistics.median(times), 1e-6)))


def _better(a: dict[str, Any], b: dict[str, Any], metric: str) -> bool:
    """Is run ``a`` better than ``b`` on validation (accuracy, then loss; or loss)?"""

    def key(r: dict[str, Any]) -> tuple[float, float]:
        loss = r["val_loss"] if r["val_loss"] is not None else math.inf
        acc = r.get("val_accuracy") or 0.0
        return (-acc, loss) if metric == "accuracy" else (loss, 0.0)

    return key(a) < key(b)


def run_cell(
    suite: Suite, spec: TaskSpec, layer: str, seed: int, budget_s: float | None, steps: int | None
) -> dict[str, Any]:
    """Match the parameter budget, sweep the learning rates (each gets budget_s / n or
    ``steps``), keep the best on validation, evaluate it at the test lengths."""
    from statewise.layers import info

    start = time.perf_counter()
    settings = cell_settings(suite, spec, layer, seed, budget_s, steps)
    task = checked_task(spec, seed)
    metric = task.metric
    registered, options = split_entry(layer)  # "attention+rmt": options for the model
    base = ModelConfig(
        layer=registered, n_layers=suite.n_layers, vocab_size=task.vocab_size, **options
    )
    if suite.d_model is None:
        d_model, params = match_d_model(base, suite.params)
    else:
        d_model, params = (
            suite.d_model,
            count_params(build_model(replace(base, d_model=suite.d_model))),
        )
    config = replace(base, d_model=d_model)
    seq_len = task.train_batch(0, 1)[0].shape[1]
    lrs = settings["lrs"]
    share = None if budget_s is None else budget_s / len(lrs)
    best_model, best, sweep = None, None, []
    for lr in lrs:
        model, record = _train_run(config, task, lr, seed, suite, share, steps)
        sweep.append(record)
        if model is not None and (best is None or _better(record, best, metric)):
            best_model, best = model, record
    higher = metric == "accuracy"
    if metric == "accuracy":
        name = "test_accuracy" if spec.headline == "test" and spec.test_lengths else "val_accuracy"
    else:
        name = "val_loss_nats"
    cell = {
        "task": spec.name,
        "layer": layer,
        "seed": seed,
        "family": info(layer_of(layer)).family,
        "metric": name,
        "value": None,
        "higher_is_better": higher,
        "params": params,
        "d_model": d_model,
        "state_floats": model_state_floats(config, seq_len),
    }
    if best is None:  # every learning rate diverged: a result like any other, not retried
        return {
            **cell,
            "diverged": _diverged_note(sweep),
            "lr": None,
            "seconds": round(time.perf_counter() - start, 3),
            "test_accuracy": {},
            "sweep": sweep,
            "loss_curve": [],
            "model": asdict(config),
            "settings": settings,
        }
    by_length = evaluate_lengths(
        best_model, task, spec.test_lengths, suite.batch_size, TEST_BATCHES
    )
    tests = {str(length): acc for length, acc in by_length.items()}
    if name == "test_accuracy":
        value = mean_over_lengths(by_length)
    else:
        value = best["val_accuracy"] if metric == "accuracy" else best["val_loss"]
    return {
        **cell,
        "value": _finite(value),
        "lr": best["lr"],
        "steps": best["steps"],
        "tokens": best["tokens"],
        "tokens_per_s": best["tokens_per_s"],
        "train_seconds": best["train_seconds"],
        "seconds": round(time.perf_counter() - start, 3),
        "threads": torch.get_num_threads(),
        "val_loss": best["val_loss"],
        "val_accuracy": best.get("val_accuracy"),
        "val_bits_per_char": best.get("val_bits_per_char"),
        "test_accuracy": tests,
        "sweep": [{k: v for k, v in r.items() if k != "loss_curve"} for r in sweep],
        "loss_curve": best["loss_curve"],
        "model": asdict(config),
        "settings": settings,
    }


def _diverged_note(sweep: list[dict[str, Any]]) -> str:
    """One line for a cell whose every learning rate diverged: each lr, step and value."""
    runs = [
        f"lr {r['lr']:g} at step {r['diverged']['step']} ({r['diverged']['what']} is "
        f"{r['diverged']['value']})"
        for r in sweep
    ]
    return "diverged: " + "; ".join(runs)


def checked_task(spec: TaskSpec, seed: int) -> Any:
    """The task of ``spec``; ValueError if it is not a token task the arena can rank."""
    task = _task(json.dumps(spec.data, sort_keys=True), seed)
    metric = getattr(task, "metric", None)
    if metric not in METRICS or not hasattr(task, "train_batch"):
        raise ArgumentError(
            f"statewise arena: task {spec.name!r} reports {metric!r}; the arena ranks token "
            f"tasks with metrics {', '.join(METRICS)}"
        )
    return task


@functools.lru_cache(maxsize=16)
def _task(data: str, seed: int) -> Any:
    """The task of a JSON DataConfig and seed, built once for all the layers of a task
    (reading the built-in corpus takes a while); tasks are not changed by training."""
    return build_task(DataConfig(**json.loads(data)), seed)


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a temporary sibling, fsynced, renamed over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def run_cells(
    suite: Suite,
    specs: list[TaskSpec],
    layers: list[str],
    seeds: int,
    budget_s: float | None,
    steps: int | None,
    out: Path,
    log: Callable[[str], None] | None = None,
    jobs: int = 1,
    executor: str = "local",
    address: str | None = None,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Every (task, layer, seed) cell; a cell whose result file OUT/cells/<name>.json holds
    the same settings is read, not trained again. Each cell runs with ``threads`` torch
    threads (default torch.get_num_threads() // jobs, at least one). ``executor`` "local":
    ``jobs`` > 1 trains that many cells at once, each in its own process; "ray": every cell
    is a Ray task of ``threads`` CPUs, as many at once as the cluster's CPUs hold (a local
    Ray, or the cluster at ``address``). This process stores every result either way.
    Returns the results in cell order."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    for spec in specs:  # refuse a task the arena cannot rank before training anything
        checked_task(spec, 0)
    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    cells = [(spec, layer, seed) for spec in specs for layer in layers for seed in range(seeds)]
    results: list[dict[str, Any] | None] = [None] * len(cells)
    to_train = []
    for i, (spec, layer, seed) in enumerate(cells):
        path = cells_dir / f"{cell_name(spec.name, layer, seed)}.json"
        if not path.exists():
            to_train.append(i)
            continue
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("settings") != cell_settings(suite, spec, layer, seed, budget_s, steps):
            raise ArgumentError(
                f"statewise arena: {path} holds a result made with other settings; "
                "rerun the same command, or choose another --out"
            )
        results[i] = stored
        log(f"{_tag(i, cells)}: done before, skipped")
    threads = threads if threads is not None else max(1, torch.get_num_threads() // jobs)
    # nothing left to train (a finished run read again): no executor, no Ray to start
    chosen = executor if to_train else "local"
    with _pool(chosen, jobs, threads, address, log) as (pool, slots):
        running: dict[Future, tuple[int, float]] = {}
        trained_times: list[float] = []
        start = time.perf_counter()
        guess = (budget_s if budget_s is not None else 10.0) + 5.0  # before any cell has run
        queue = list(to_train)
        while queue or running:
            while queue and len(running) < slots:
                i = queue.pop(0)
                per_cell = sum(trained_times) / len(trained_times) if trained_times else guess
                left = per_cell * (len(queue) + 1 + len(running)) / slots
                log(
                    f"{_tag(i, cells)}: training ({_clock(time.perf_counter() - start)} "
                    f"elapsed, ~{_clock(left)} left)"
                )
                spec, layer, seed = cells[i]
                future = pool.submit(run_cell, suite, spec, layer, seed, budget_s, steps)
                running[future] = (i, time.perf_counter())
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: running[f][0]):
                i, began = running.pop(future)
                results[i] = _finish(future, cells[i], cells_dir, _tag(i, cells), steps, log)
                trained_times.append(time.perf_counter() - began)
    return [r for r in results if r is not None]


def _tag(i: int, cells: list[tuple[TaskSpec, str, int]]) -> str:
    spec, layer, seed = cells[i]
    return f"[{i + 1}/{len(cells)}] {spec.name} {layer} seed {seed}"


def _finish(
    future: Future,
    cell: tuple[TaskSpec, str, int],
    cells_dir: Path,
    tag: str,
    steps: int | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The result of a finished cell, stored and logged; a failed layer's row, logged."""
    spec, layer, seed = cell
    try:
        result = future.result()
    except (RuntimeError, FloatingPointError) as err:  # the layer failed: shown, retried
        log(f"{tag}: failed ({err}); not stored, a rerun tries it again")
        return _failed(spec.name, layer, seed, err)
    write_json(cells_dir / f"{cell_name(spec.name, layer, seed)}.json", result)
    if "diverged" in result:
        log(f"{tag}: {result['diverged']}; stored, not retried")
        return result
    value = "n/a" if result["value"] is None else f"{result['value']:.4f}"
    log(
        f"{tag}: {result['metric']} {value} in {result['seconds']:.1f} s "
        f"(d_model {result['d_model']}, {result['params']:,} params, lr {result['lr']:g}, "
        f"{result['steps']} steps)"
        + (FEW_STEPS_NOTE if steps is None and result["steps"] < FEW_STEPS else "")
    )
    return result


class _InlineExecutor(Executor):
    """jobs=1: run each cell in this process when it is submitted, with ``threads`` torch
    threads if given (restored after the cell)."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def submit(self, fn, /, *args, **kwargs) -> Future:  # type: ignore[override]
        future: Future = Future()
        saved = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:  # handed to _finish, which re-raises what it does not know
            future.set_exception(err)
        finally:
            torch.set_num_threads(saved)
        return future


# the environment a --jobs worker starts with: numba sizes its thread pool once, when it is
# imported, and a pool larger than the worker's share of the cores slows every process on
# the machine (measured: mamba's training step 2.5x slower with 2 workers of 2 numba threads)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


EXECUTORS = ("local", "ray")


@contextlib.contextmanager
def _pool(
    executor: str,
    jobs: int,
    threads: int,
    address: str | None,
    log: Callable[[str], None] | None,
) -> Iterator[tuple[Executor, int]]:
    """The executor that runs the cells and how many cells it runs at once: local (this
    process for jobs=1, else ``jobs`` worker processes) or Ray (statewise.arena.executors;
    ``log`` gets its one line on the cluster)."""
    if executor == "ray":
        from statewise.arena.executors import ray_executor

        env = {name: str(threads) for name in THREAD_VARIABLES}
        with ray_executor(threads, env, address, log) as (pool, slots):
            yield pool, slots
        return
    if executor != "local":
        raise ArgumentError(
            f"statewise arena: unknown executor {executor!r}; choose one of: "
            + ", ".join(EXECUTORS)
        )
    if jobs == 1:
        yield _InlineExecutor(threads), 1
        return
    with _executor(jobs, threads) as pool:
        yield pool, jobs


@contextlib.contextmanager
def _executor(jobs: int, threads: int) -> Iterator[Executor]:
    """jobs=1: this process; else ``jobs`` spawned workers of ``threads`` threads each. An
    interrupted arena (Ctrl-C, SIGTERM, an error) drops the cells not yet started and stops
    the workers' running cells (they are trained again on a rerun)."""
    if jobs == 1:
        yield _InlineExecutor()
        return
    with environment({name: str(threads) for name in THREAD_VARIABLES}, override=True):
        others = {p.pid for p in multiprocessing.active_children()}
        pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
        try:
            yield pool
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            _stop_workers([p for p in multiprocessing.active_children() if p.pid not in others])
            raise
        pool.shutdown()


WORKER_GRACE_S = 10.0  # an interrupted worker's time to exit cleanly before it is killed


def _stop_workers(workers: list[multiprocessing.Process]) -> None:
    """Stop the workers' running cells now: a SIGTERM reaches the main process only, and the
    interpreter would wait at exit for each worker to finish its cell. SIGINT first (as
    Ctrl-C does: the cell raises KeyboardInterrupt and the worker exits cleanly), then
    SIGTERM for a worker that has not exited after WORKER_GRACE_S (e.g. one caught in the
    middle of starting up)."""
    for worker in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGINT)
    deadline = time.monotonic() + WORKER_GRACE_S
    while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    for worker in workers:
        if worker.is_alive():
            worker.terminate()


def _done(cells_dir: Path, spec: TaskSpec, layer: str, seed: int) -> bool:
    return (cells_dir / f"{cell_name(spec.name, layer, seed)}.json").exists()


def _failed(task: str, layer: str, seed: int, err: Exception) -> dict[str, Any]:
    from statewise.layers import info

    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    return {
        "task": task,
        "layer": layer,
        "seed": seed,
        "family": info(layer_of(layer)).family,
        "value": None,
        "error": message,
    }
