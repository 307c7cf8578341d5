"""``statewise bench speed``: tokens/s, step latency and peak memory of the layers.

For every chosen layer and shape (batch, seq_len, d_model), in one process:

- ``forward_tps``: tokens/s of ``layer(x)`` in the layer's auto mode under ``torch.no_grad``
  (batch * seq_len / median time of ``repeats`` calls after one warm-up call).
- ``fwd_bwd_tps``: tokens/s of ``y, _ = layer(x); y.backward(g)`` with ``x`` and every
  parameter requiring grad (median as above).
- ``step_us``: microseconds per token of ``layer.step`` at batch 1 under ``torch.no_grad``
  (a run of ``STEP_TOKENS`` steps, median of ``repeats`` runs, per token).
- ``peak_mb``: the peak resident-set growth (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``, minus ``VmRSS`` before) of one forward+backward, in MiB. glibc
  is told to serve every allocation over 64 KiB by mmap and to give freed memory back, so
  ``malloc_trim`` returns free heap pages before each measurement, so
  the figure is close to the peak of live tensor bytes (activations saved for backward,
  gradients, workspaces), rounded to pages. Measured after all timings, because this
  setting changes allocation speed. Linux only; ``None`` elsewhere.
- With ``dtype="bfloat16"``: ``bf16_fwd_tps`` and ``bf16_fwd_bwd_tps``, the same two numbers
  under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (the projections as bfloat16 GEMMs,
  the recurrences in float32: statewise.ops.precision), and ``bf16_speedup``, bfloat16's
  forward+backward tokens/s over float32's, both timed in this process.
- ``backend``: the kernel backend the row ran under (:mod:`statewise.kernels`); with several
  backends, each non-torch row has ``vs_torch``: its tokens/s over the torch row's (above 1:
  the compiled kernels are faster), and its step time ratio torch/it.
- For chunkwise matrix-state layers, ``gemm_fraction``: the forward's FLOP/s (FLOPs as
  counted by :func:`chunk_flops_per_token`) over the machine's measured fp32 GEMM GFLOP/s.
- For diagonal scans, ``bandwidth_fraction``: the recurrence's bytes (as counted by
  :func:`scan_bytes_per_token`) per second of the whole layer forward over the measured
  memory bandwidth.
"""

from __future__ import annotations

import ctypes
import gc
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from statewise import kernels, layers
from statewise.bench.machine import SLOW_CALL_S, Machine, median_seconds
from statewise.errors import ArgumentError

DEFAULT_LAYERS = ("lstm", "mingru", "rglru", "mamba", "retnet", "mamba2", "mlstm")
CHUNKED = ("retnet", "gateloop", "mlstm", "mamba2", "rwkv")
DELTA = ("deltanet", "gated_deltanet")  # chunkwise too, by the WY/UT form
DIAGONAL = ("mingru", "minlstm", "lru", "rglru", "hgrn", "mamba")
STEP_TOKENS = 32
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class Shape:
    batch: int
    seq_len: int
    d_model: int

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len

    def label(self) -> str:
        return f"B{self.batch} T{self.seq_len} D{self.d_model}"


# ------------------------------------------------------------------ timing
def forward_fn(module: Callable, x: torch.Tensor) -> Callable[[], object]:
    """A no-grad forward of ``module`` (a callable returning a tensor) on ``x``."""

    def run() -> object:
        with torch.no_grad():
            return module(x)

    return run


def fwd_bwd_fn(
    module: Callable, params: list[torch.nn.Parameter], x: torch.Tensor
) -> Callable[[], object]:
    """Forward and backward of ``module`` on a copy of ``x`` that requires grad."""
    x = x.detach().clone().requires_grad_(True)
    grad = torch.randn_like(x)

    def run() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        module(x).backward(grad)

    return run


def throughput(
    module: Callable,
    params: list,
    x: torch.Tensor,
    repeats: int,
    backward: bool = True,
    budget_s: float = SLOW_CALL_S,
) -> dict:
    """Forward and (unless ``backward`` is False: None) forward+backward tokens/s; after a
    warm-up slower than ``budget_s`` one call is timed (see :func:`median_seconds`)."""
    tokens = x.shape[0] * x.shape[1]
    fwd = median_seconds(forward_fn(module, x), repeats, budget_s=budget_s)
    both = (
        median_seconds(fwd_bwd_fn(module, params, x), repeats, budget_s=budget_s)
        if backward
        else None
    )
    return {"forward_tps": tokens / fwd, "fwd_bwd_tps": None if both is None else tokens / both}


# ------------------------------------------------------------------ memory
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{key} not in /proc/self/status")


_LIBC: ctypes.CDLL | None = None


def prepare_memory_measurement() -> bool:
    """Make freed memory go back to the OS at once (glibc), so RSS follows live tensors."""
    global _LIBC
    try:
        _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        _LIBC.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_bytes("VmHWM")
    except OSError:
        return False
    return True


def peak_mb(run: Callable[[], object], warmup: Callable[[], object] | None = None) -> float:
    """Peak RSS growth of ``run()`` in MiB (see the module docstring), after one call of
    ``warmup`` (default: ``run``) so that lazy initialisation does not count."""
    (warmup or run)()
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)  # free heap pages left by earlier runs go back to the OS
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_bytes("VmRSS")
    run()
    return max(0, _status_bytes("VmHWM") - before) / 2**20


# ------------------------------------------------------------------ work counts
def dense_flops_per_token(layer: torch.nn.Module) -> int:
    """2 x the weights held in parameters of rank >= 2 (projections, depthwise convs)."""
    return 2 * sum(p.numel() for p in layer.parameters() if p.dim() >= 2)


def chunk_flops_per_token(
    name: str, layer: torch.nn.Module, seq_len: int, mode: str = "chunk"
) -> int | None:
    """FLOPs per token of a chunkwise forward: the dense projections plus, per head,
    with chunk length C = min(chunk_size, seq_len), key width K and value width V,
    2C(K + V) for the intra-chunk (Q K^T) and (masked) V products, 2KV for the
    inter-chunk Q S and 2KV for the state update K^T V. Mamba-2 (SSD): K = d_state,
    V = head_dim, and its C B^T product counted per head as in ssd_minimal. In the
    parallel (quadratic) mode: 2T(K + V) per head. None for the recurrent mode.

    The delta rule's chunk form (statewise.ops.delta_rule) per head and token: 2CK for
    K K^T, C(V + K) for the triangular solve against [V, K], 2CK for Q K^T, 2C(V + K) for
    (Q K^T) [U, W], 2K(V + K) for K^T [U, W], 2KV for the queries against the chunk's
    starting state and 2K^2 V / C for the state's transition, K = head_k, V = head_v."""
    if name in DELTA and mode == "chunk":
        heads, c = layer.n_heads, min(layer.chunk_size, seq_len)
        k, v = layer.head_k, layer.head_v
        per_head = 4 * c * k + 3 * c * (v + k) + 2 * k * (v + k) + 2 * k * v + 2 * k * k * v // c
        return dense_flops_per_token(layer) + heads * per_head
    if name not in CHUNKED or mode not in ("chunk", "parallel"):
        return None
    heads = getattr(layer, "n_heads", None)
    chunk = getattr(layer, "chunk_size", None)
    if name == "mamba2":
        k, v = getattr(layer, "d_state", None), getattr(layer, "head_dim", None)
    elif name == "mlstm":
        k, v = getattr(layer, "d_k", None), getattr(layer, "d_v", None)
    else:
        k = v = getattr(layer, "head_dim", None)
    if None in (heads, chunk, k, v):
        return None
    if mode == "parallel":  # the quadratic form: (Q K^T) V over the whole sequence
        return dense_flops_per_token(layer) + heads * 2 * seq_len * (k + v)
    c = min(chunk, seq_len)
    return dense_flops_per_token(layer) + heads * (2 * c * (k + v) + 4 * k * v)


def scan_bytes_per_token(name: str, layer: torch.nn.Module, itemsize: int) -> int | None:
    """Bytes per token the recurrence h_t = a_t h_{t-1} + b_t must move at the least:
    read a_t and b_t, write h_t, over the S recurrent channels (3 S itemsize). S is
    d_hidden (minGRU, minLSTM, HGRN), 2 d_hidden for LRU (complex), lru_width (RG-LRU),
    d_inner x d_state (Mamba, whose a and b are per channel and state index)."""
    if name not in DIAGONAL:
        return None
    if name == "mamba":
        d_inner, d_state = getattr(layer, "d_inner", None), getattr(layer, "d_state", None)
        channels = None if None in (d_inner, d_state) else d_inner * d_state
    elif name == "rglru":
        channels = getattr(layer, "lru_width", None)
    else:
        channels = getattr(layer, "d_hidden", None)
        if channels is not None and name == "lru":
            channels *= 2
    return None if channels is None else 3 * channels * itemsize


# ------------------------------------------------------------------ one layer
def step_us(layer: layers.SequenceMixer, d_model: int, repeats: int) -> float:
    """Microseconds per token of ``layer.step`` at batch 1."""
    xs = torch.randn(STEP_TOKENS, 1, d_model)

    def run() -> None:
        with torch.no_grad():
            state = layer.init_state(1)
            for x_t in xs:
                _, state = layer.step(x_t, state)

    return median_seconds(run, repeats) / STEP_TOKENS * 1e6


def build(name: str, d_model: int) -> layers.SequenceMixer:
    torch.manual_seed(0)
    return layers.get(name, d_model)


def measure_layer(
    name: str, shape: Shape, repeats: int, machine: Machine, dtype: str = "float32"
) -> dict:
    """Every number of one layer at one shape under the current backend (memory is added
    later by ``layer_peak_mb``)."""
    layer = build(name, shape.d_model)
    x = torch.randn(shape.batch, shape.seq_len, shape.d_model)

    def module(inp: torch.Tensor) -> torch.Tensor:
        return layer(inp)[0]

    def module_bf16(inp: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return layer(inp)[0]

    row = {
        "layer": name,
        "batch": shape.batch,
        "seq_len": shape.seq_len,
        "d_model": shape.d_model,
        "mode": layer.resolve_mode(shape.seq_len),
        "backend": kernels.current(),
        **throughput(module, list(layer.parameters()), x, repeats),
        "step_us": step_us(layer, shape.d_model, repeats),
        "peak_mb": None,
    }
    if dtype == "bfloat16":
        bf16 = throughput(module_bf16, list(layer.parameters()), x, repeats)
        row["bf16_fwd_tps"], row["bf16_fwd_bwd_tps"] = bf16["forward_tps"], bf16["fwd_bwd_tps"]
        row["bf16_speedup"] = bf16["fwd_bwd_tps"] / row["fwd_bwd_tps"]
    flops = chunk_flops_per_token(name, layer, shape.seq_len, row["mode"])
    if flops is not None:
        row["flops_per_token"] = flops
        row["dense_flops_per_token"] = dense_flops_per_token(layer)  # the rest is the mixing
        row["gemm_fraction"] = flops * row["forward_tps"] / (machine.gemm_gflops * 1e9)
    nbytes = scan_bytes_per_token(name, layer, x.element_size())
    if nbytes is not None:
        row["scan_bytes_per_token"] = nbytes
        row["bandwidth_fraction"] = nbytes * row["forward_tps"] / (machine.bandwidth_gbs * 1e9)
    return row


def layer_peak_mb(name: str, shape: Shape) -> float:
    layer = build(name, shape.d_model)
    x = torch.randn(shape.batch, shape.seq_len, shape.d_model)
    return peak_mb(fwd_bwd_fn(lambda inp: layer(inp)[0], list(layer.parameters()), x))


# ------------------------------------------------------------------ the run
class Progress:
    """``[k/n] what ... elapsed, ~left`` lines on stderr."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self.start = time.perf_counter()

    def __call__(self, what: str) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        left = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        left_s = "?" if math.isnan(left) else f"~{left:.0f}s"
        print(
            f"[{self.done + 1}/{self.total}] {what} (elapsed {elapsed:.0f}s, left {left_s})",
            file=sys.stderr,
            flush=True,
        )
        self.done += 1


def check_layers(names: list[str]) -> None:
    known = set(layers.names())
    for name in names:
        if name not in known:
            raise ArgumentError(f"unknown layer {name!r}; choose from: {', '.join(sorted(known))}")


def resolve_backends(choice: str | None) -> list[str]:
    """``torch``, ``numba``, ``both`` (torch then numba) or None (the current backend)."""
    if choice is None:
        return [kernels.current()]
    names = list(kernels.BACKENDS) if choice == "both" else [choice]
    for name in names:
        if name not in kernels.BACKENDS:
            raise ArgumentError(f"backend must be torch, numba or both, got {choice!r}")
        if name not in kernels.available():
            raise ArgumentError(
                f"backend {name!r} is not installed (available: {kernels.available()})"
            )
    return names


def vs_torch(row: dict, torch_row: dict) -> dict:
    """Speed-ups of ``row`` over the same cell under the torch backend (None if missing)."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a / b

    return {
        "forward_ratio": ratio(row.get("forward_tps"), torch_row.get("forward_tps")),
        "fwd_bwd_ratio": ratio(row.get("fwd_bwd_tps"), torch_row.get("fwd_bwd_tps")),
        "step_ratio": ratio(torch_row.get("step_us"), row.get("step_us")),
    }


def run_speed(
    names: list[str],
    shapes: list[Shape],
    repeats: int,
    machine: Machine,
    with_peers: bool = False,
    progress: bool = True,
    backends: list[str] | None = None,
    dtype: str = "float32",
) -> dict:
    """Measure every layer at every shape under every backend (and its peers, timed once
    per shape); the JSON-ready result. ``dtype="bfloat16"`` also times each layer under
    bfloat16 autocast."""
    from statewise.bench import peers as peer_mod

    check_layers(names)
    if repeats < 1:
        raise ArgumentError(f"repeats must be >= 1, got {repeats}")
    if dtype not in DTYPES:
        raise ArgumentError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    backends = backends or [kernels.current()]
    peer_lists = {n: peer_mod.peers_for(n) if with_peers else [] for n in names}
    cells = [(n, s, b) for n in names for s in shapes for b in backends]
    n_peer_runs = sum(len(peer_lists[n]) for n in names) * len(shapes)
    tick = Progress(2 * len(cells) + n_peer_runs, progress)
    rows, timed_peers = [], {}
    for name, shape, backend in cells:
        tick(f"{name} {shape.label()} [{backend}]")
        try:
            with kernels.use(backend):
                row = measure_layer(name, shape, repeats, machine, dtype)
        except Exception as err:  # a broken layer is reported, the run goes on
            row = {**_key(name, shape), "backend": backend, "error": f"{type(err).__name__}: {err}"}
        row["peers"] = []
        for peer in peer_lists[name]:
            if (name, shape, peer.name) not in timed_peers:
                tick(f"{name} {shape.label()} vs {peer.name}")
                timed_peers[name, shape, peer.name] = peer_mod.time_peer(
                    peer, build(name, shape.d_model), shape, repeats
                )
            row["peers"].append(peer_mod.with_ratios(timed_peers[name, shape, peer.name], row))
        rows.append(row)

    def cell(r: dict) -> tuple:
        return r["layer"], r["batch"], r["seq_len"], r["d_model"]

    torch_rows = {cell(r): r for r in rows if r["backend"] == "torch"}
    for row in rows:
        base = torch_rows.get(cell(row))
        if row["backend"] != "torch" and base is not None and "error" not in row:
            row["vs_torch"] = vs_torch(row, base)
    memory_ok = prepare_memory_measurement()
    for row, (name, shape, backend) in zip(rows, cells):
        tick(f"{name} {shape.label()} [{backend}] peak memory")
        if memory_ok and "error" not in row:
            with kernels.use(backend):
                row["peak_mb"] = layer_peak_mb(name, shape)
    return {
        "machine": machine.as_dict(),
        "repeats": repeats,
        "backends": backends,
        "memory_measured": "peak RSS growth of one forward+backward (VmHWM), MiB"
        if memory_ok
        else None,
        "results": rows,
    }


def _key(name: str, shape: Shape) -> dict:
    return {"layer": name, "batch": shape.batch, "seq_len": shape.seq_len, "d_model": shape.d_model}


# ------------------------------------------------------------------ the table
def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"x{value:.2f}"


def format_table(result: dict) -> str:
    """A readable table of ``run_speed``'s result."""
    m = result["machine"]
    lines = [
        f"machine: fp32 GEMM {m['gemm_gflops']:.0f} GFLOP/s, memory {m['bandwidth_gbs']:.1f} GB/s, "
        f"{m['threads']} threads, torch {m['torch_version']}",
        "",
    ]
    header = [
        "layer",
        "shape",
        "backend",
        "mode",
        "fwd tok/s",
        "fwd+bwd tok/s",
        "step us",
        "peak MiB",
        "of limit",
    ]
    with_bf16 = any("bf16_speedup" in r for r in result["results"])
    if with_bf16:
        header.append("bf16 fwd+bwd")
    table = [header]
    for r in result["results"]:
        shape = f"B{r['batch']} T{r['seq_len']} D{r['d_model']}"
        if "error" in r:
            error = "error: " + r["error"][:60]
            table.append([r["layer"], shape, r.get("backend", ""), error, "", "", "", "", ""])
            continue
        if "gemm_fraction" in r:
            limit = f"{100 * r['gemm_fraction']:.1f}% GEMM"
        elif "bandwidth_fraction" in r:
            limit = f"{100 * r['bandwidth_fraction']:.1f}% BW"
        else:
            limit = "-"
        table.append(
            [
                r["layer"],
                shape,
                r.get("backend", ""),
                r["mode"],
                _fmt(r["forward_tps"], ",.0f"),
                _fmt(r["fwd_bwd_tps"], ",.0f"),
                _fmt(r["step_us"], ".0f"),
                _fmt(r["peak_mb"], ".1f"),
                limit,
                *([_ratio(r.get("bf16_speedup"))] if with_bf16 else []),
            ]
        )
        if "vs_torch" in r:
            v = r["vs_torch"]
            table.append(
                [
                    "",
                    "",
                    "",
                    "vs torch backend",
                    _ratio(v["forward_ratio"]),
                    _ratio(v["fwd_bwd_ratio"]),
                    _ratio(v["step_ratio"]),
                    "",
                    "",
                ]
            )
        for p in r.get("peers", []):
            if "forward_tps" not in p:
                table.append(["", "", "", f"vs {p['peer']}: {p['status']}", "", "", "", "", ""])
                continue
            table.append(
                [
                    "",
                    "",
                    "",
                    f"vs {p['peer']}",
                    _ratio(p["forward_ratio"]),
                    _ratio(p["fwd_bwd_ratio"]),
                    "",
                    "",
                    "",
                ]
            )
    table = [row + [""] * (len(header) - len(row)) for row in table]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    for row in table:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    lines.append("")
    lines.append("peer rows: ours/peer tokens/s (x2.00 = ours twice as fast)")
    if any("vs_torch" in r for r in result["results"]):
        lines.append("'vs torch backend' rows: this backend's speed / the torch backend's")
    if with_bf16:
        lines.append("bf16 fwd+bwd: tokens/s under bfloat16 autocast / float32's")
    return "\n".join(lines)
