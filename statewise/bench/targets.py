"""The speed targets of the CPU kernel work, as data, and how a measurement is judged.

Each :class:`Target` names the measurements (:class:`Job`) it needs, how a value is made
from them (``kind``) and the threshold. ``statewise bench targets`` runs exactly those
jobs (target_run.py) and prints :func:`format_targets`. Forward+backward unless noted;
the median of a few calls in one process; the smallest shapes the issue allows.

===========================  ======================================================  =========
target                       value                                                   threshold
===========================  ======================================================  =========
lstm, gru                    fwd+bwd tok/s ours / torch.nn.LSTM, GRU                 >= 0.9
multi-head lstm, slstm       fwd+bwd tok/s ours / eager per-step loop (12 x 64)      >= 10
mingru minlstm lru rglru     fwd+bwd tok/s ours / eager step loop                    >= 10
hgrn                         fwd+bwd tok/s ours / mingru-pytorch (same shape)        >= 2
scan kernel                  forward: 3 B T S itemsize bytes / time / bandwidth      >= 50%
mamba                        fwd+bwd tok/s ours / mambapy MambaBlock                 >= 5
retnet gateloop mlstm        fwd+bwd tok/s chunk mode / recurrent mode, T = 4096     >= 10
mamba2 rwkv                  forward FLOP/s in chunk mode / GEMM peak, T = 4096      >= 40%
deltanet gated_deltanet      fwd+bwd tok/s chunk mode / recurrent mode, T = 512      >= 1
                             forward FLOP/s in chunk mode / GEMM peak, T = 4096      >= 35%
every layer but attention    step time at batch 1 / (parameter bytes / bandwidth)    <= 2
                             peak memory of 2T steps - of T steps (MiB)              <= 0.5
===========================  ======================================================  =========

The scan kernel is :func:`statewise.ops.scan.linear_recurrence` alone (a, b read, h
written): float32 for minGRU, minLSTM, RG-LRU and HGRN, complex64 for LRU. "mingru-pytorch"
is the yardstick of every diagonal layer, as the issue states it (the same shape; for the
layers other than mingru it is a different layer). attention keeps a growing KV cache by
design, so it has no step targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from statewise import layers
from statewise.bench.speed import DELTA, Shape

DIAGONAL = ("mingru", "minlstm", "lru", "rglru", "hgrn")
CHUNKED = ("retnet", "gateloop", "mlstm", "mamba2", "rwkv")
NO_STEP_TARGETS = ("attention",)  # its state (the KV cache) grows with T by design
LOWER_IS_BETTER = ("step", "memory")
KINDS = ("ratio", "gemm", "bandwidth", "step", "memory")


@dataclass(frozen=True)
class Shapes:
    """The shapes a target run uses; the defaults are the smallest the issue allows."""

    base: Shape = Shape(4, 1024, 256)  # lstm, gru, diagonal layers, mamba, scan
    heads: Shape = Shape(4, 1024, 768)  # multi-head lstm / slstm
    n_heads: int = 12  # 12 heads x 64
    chunk: Shape = Shape(4, 4096, 256)  # chunkwise layers
    step_d_model: int = 256
    # the memory of T = 2048 and 2T = 4096 steps: growth of 256 bytes a step reads as 0.5 MiB
    # (a leaked tensor is ~540 bytes), well above the ~0.1 MiB noise of the measurement
    memory_steps: int = 2048
    delta_ratio: Shape = Shape(4, 512, 256)  # the delta rule: chunk beats recurrent from here


DEFAULT_SHAPES = Shapes()


@dataclass(frozen=True)
class Job:
    """One measurement. kind: "layer" (our layer's tokens/s: fwd+bwd, and the forward when
    ``forward``), "peer" (a peer's, ``option`` = its name), "scan" (``option`` = dtype),
    "step" (step latency at batch 1), "memory" (peak memory of ``shape.seq_len`` steps).
    ``backend`` None: the measurement does not depend on statewise's kernel backend."""

    kind: str
    layer: str
    shape: Shape
    backend: str | None = None
    kwargs: tuple[tuple[str, int], ...] = ()
    mode: str = "auto"
    option: str = ""
    forward: bool = False

    def label(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.kwargs)
        extra += "" if self.mode == "auto" else f" mode={self.mode}"
        extra += f" {self.option}" if self.option else ""
        where = f" [{self.backend}]" if self.backend else ""
        return f"{self.kind} {self.layer}{extra} {self.shape.label()}{where}"

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "layer": self.layer,
            "batch": self.shape.batch,
            "seq_len": self.shape.seq_len,
            "d_model": self.shape.d_model,
            "backend": self.backend,
            "kwargs": dict(self.kwargs),
            "mode": self.mode,
            "option": self.option,
            "label": self.label(),
        }


@dataclass(frozen=True)
class Target:
    """One line of the target table; ``jobs`` feed :func:`value_of` (see ``kind``)."""

    layer: str  # the registered layer it is about, or "scan"
    subject: str  # "lstm", "multi-head lstm", "scan kernel (float32)", ...
    what: str  # what the value is, in words
    kind: str  # one of KINDS
    threshold: float
    jobs: tuple[Job, ...]
    backend: str
    shape: str
    note: str = ""  # why the target is not run, if it is not


def heads_kwargs(n_heads: int, d_model: int) -> tuple[tuple[str, int], ...] | None:
    """``(("n_heads", n),)`` if our lstm takes ``n_heads`` at this width, else None."""
    try:
        layers.get("lstm", d_model=d_model, n_heads=n_heads)
    except (TypeError, ValueError):
        return None
    return (("n_heads", n_heads),)


def build_targets(
    backend: str, shapes: Shapes = DEFAULT_SHAPES, only: tuple[str, ...] | None = None
) -> list[Target]:
    """The target table for our side run under ``backend``; ``only``: these subjects."""
    s = shapes
    out: list[Target] = []

    def ours(name: str, shape: Shape, **kw: object) -> Job:
        return Job("layer", name, shape, backend, **kw)

    def peer(name: str, shape: Shape, peer_name: str, **kw: object) -> Job:
        return Job("peer", name, shape, None, option=peer_name, **kw)

    def ratio(subject: str, shape: Shape, peer_name: str, threshold: float, **kw: object) -> None:
        name = subject.split()[-1]  # "multi-head lstm" -> "lstm"
        # mingru-pytorch does not depend on our layer: one job for all the diagonal layers
        of = "mingru" if peer_name == "mingru-pytorch" else name
        jobs = (ours(name, shape, **kw), peer(of, shape, peer_name, **kw))
        what = f"fwd+bwd tok/s ours / {peer_name}"
        out.append(Target(name, subject, what, "ratio", threshold, jobs, backend, shape.label()))

    for name, peer_name in (("lstm", "torch.nn.LSTM"), ("gru", "torch.nn.GRU")):
        ratio(name, s.base, peer_name, 0.9)
    kwargs = heads_kwargs(s.n_heads, s.heads.d_model)
    if kwargs is None:
        out.append(
            Target(
                "lstm",
                "multi-head lstm",
                f"fwd+bwd tok/s ours / eager loop ({s.n_heads} heads)",
                "ratio",
                10.0,
                (),
                backend,
                s.heads.label(),
                note=f"not run: layers.get('lstm', d_model={s.heads.d_model}, "
                f"n_heads={s.n_heads}) is not supported",
            )
        )
    else:
        ratio("multi-head lstm", s.heads, "eager loop", 10.0, kwargs=kwargs)
    ratio("slstm", s.heads, "eager loop", 10.0, kwargs=(("n_heads", s.n_heads),))
    for name in DIAGONAL:
        ratio(name, s.base, "eager step loop", 10.0)
        ratio(name, s.base, "mingru-pytorch", 2.0)
    b, t, d = s.base.batch, s.base.seq_len, s.base.d_model
    for dtype, users in (("float32", "mingru minlstm rglru hgrn"), ("complex64", "lru")):
        out.append(
            Target(
                "scan",
                f"scan kernel ({dtype})",
                f"forward bytes/s / bandwidth (the scan of {users})",
                "bandwidth",
                0.5,
                (Job("scan", "scan", s.base, backend, option=dtype),),
                backend,
                f"B{b} T{t} S{d}",
            )
        )
    ratio("mamba", s.base, "mambapy MambaBlock", 5.0)
    for name in CHUNKED:
        chunk = ours(name, s.chunk, mode="chunk", forward=True)
        rec = ours(name, s.chunk, mode="recurrent")
        label = s.chunk.label()
        what = "fwd+bwd tok/s chunk / recurrent"
        out.append(Target(name, name, what, "ratio", 10.0, (chunk, rec), backend, label))
        what = "chunk forward / GEMM peak"
        out.append(Target(name, name, what, "gemm", 0.4, (chunk,), backend, label))
    for name in DELTA:  # issue 20: faster than its own loop from T 512, 35% of the GEMM peak
        chunk = ours(name, s.delta_ratio, mode="chunk")
        rec = ours(name, s.delta_ratio, mode="recurrent")
        what = "fwd+bwd tok/s chunk / recurrent"
        label = s.delta_ratio.label()
        out.append(Target(name, name, what, "ratio", 1.0, (chunk, rec), backend, label))
        chunk = ours(name, s.chunk, mode="chunk", forward=True)
        what = "chunk forward / GEMM peak"
        out.append(Target(name, name, what, "gemm", 0.35, (chunk,), backend, s.chunk.label()))
    for name in layers.names():
        if name in NO_STEP_TARGETS:
            continue
        step = Job("step", name, Shape(1, 1, s.step_d_model), backend)
        out.append(
            Target(
                name,
                name,
                "step time at B1 / parameter read time",
                "step",
                2.0,
                (step,),
                backend,
                f"B1 D{s.step_d_model}",
            )
        )
        short = Job("memory", name, Shape(1, s.memory_steps, s.step_d_model), backend)
        long = Job("memory", name, Shape(1, 2 * s.memory_steps, s.step_d_model), backend)
        out.append(
            Target(
                name,
                name,
                f"step peak memory, {2 * s.memory_steps} - {s.memory_steps} steps",
                "memory",
                0.5,
                (short, long),
                backend,
                f"B1 D{s.step_d_model}",
            )
        )
    if only is not None:
        out = [t for t in out if t.layer in only]
    return out


def value_of(target: Target, results: dict, machine: dict) -> tuple[float | None, str]:
    """The target's value from the job results (``{job: result dict}``) and the machine's
    limits (``{"gemm_gflops", "bandwidth_gbs"}``); (None, why) when it cannot be made."""
    if target.note:
        return None, target.note
    got = []
    for job in target.jobs:
        result = results.get(job)
        if result is None:
            return None, f"not measured: {job.label()}"
        if "error" in result or result.get("status", "ok") != "ok":
            why = result.get("error") or result.get("status")
            return None, f"{job.label()}: {why}"
        got.append(result)
    bandwidth = machine["bandwidth_gbs"] * 1e9
    kind = target.kind
    if kind == "ratio":
        return got[0]["fwd_bwd_tps"] / got[1]["fwd_bwd_tps"], ""
    if kind == "gemm":
        flops = got[0].get("flops_per_token")
        if flops is None:
            return None, "no FLOP count for this layer"
        return flops * got[0]["forward_tps"] / (machine["gemm_gflops"] * 1e9), ""
    if kind == "bandwidth":
        return got[0]["bytes"] / got[0]["forward_s"] / bandwidth, ""
    if kind == "step":
        return got[0]["step_s"] / (got[0]["param_bytes"] / bandwidth), ""
    if kind == "memory":
        return got[1]["peak_mb"] - got[0]["peak_mb"], ""
    raise ValueError(f"unknown target kind {kind!r}; choose from {KINDS}")


def judge(kind: str, value: float | None, threshold: float) -> tuple[str, str]:
    """("PASS" | "MISS" | "NOT RUN", by how much) for a value against its threshold."""
    if value is None or not math.isfinite(value):
        return "NOT RUN", ""
    if kind == "memory":
        ok = value <= threshold
        return ("PASS", "") if ok else ("MISS", f"by {value - threshold:.2f} MiB")
    if kind in LOWER_IS_BETTER:
        factor = threshold / value if value > 0 else math.inf
    else:
        factor = value / threshold
    if factor >= 1:
        return "PASS", f"x{factor:.2f} beyond"
    return "MISS", f"needs x{1 / factor:.2f}" if factor > 0 else "MISS"


def format_value(kind: str, value: float | None) -> str:
    if value is None:
        return "-"
    if kind in ("gemm", "bandwidth"):
        return f"{100 * value:.1f}%"
    if kind == "memory":
        return f"{value:+.2f} MiB"
    return f"x{value:.2f}"


def format_threshold(kind: str, threshold: float) -> str:
    if kind in ("gemm", "bandwidth"):
        return f">= {100 * threshold:.0f}%"
    if kind == "memory":
        return f"<= {threshold} MiB"
    return f"{'<=' if kind in LOWER_IS_BETTER else '>='} x{threshold:g}"


def evaluate(targets: list[Target], results: dict, machine: dict) -> list[dict]:
    """One JSON-ready row per target: value, status (PASS / MISS / NOT RUN) and margin."""
    rows = []
    for target in targets:
        value, why = value_of(target, results, machine)
        status, margin = judge(target.kind, value, target.threshold)
        rows.append(
            {
                "layer": target.layer,
                "subject": target.subject,
                "what": target.what,
                "kind": target.kind,
                "shape": target.shape,
                "backend": target.backend,
                "threshold": target.threshold,
                "value": value,
                "status": status,
                "margin": margin or why,
                "jobs": [job.label() for job in target.jobs],
            }
        )
    return rows


COLUMNS = ("layer", "target", "shape", "backend", "measured", "needed", "status", "margin")


def _cells(row: dict) -> list[str]:
    return [
        row["subject"],
        row["what"],
        row["shape"],
        row["backend"],
        format_value(row["kind"], row["value"]),
        format_threshold(row["kind"], row["threshold"]),
        row["status"],
        row["margin"],
    ]


def format_targets(rows: list[dict]) -> str:
    """The target table as aligned text, with a PASS/MISS count."""
    table = [list(COLUMNS)] + [_cells(r) for r in rows]
    widths = [max(len(line[c]) for line in table) for c in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table]
    return "\n".join(lines + ["", summary(rows)])


def format_markdown(rows: list[dict]) -> str:
    """The target table as a Markdown table, with a PASS/MISS count."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in _cells(row)) + " |")
    return "\n".join(lines + ["", summary(rows), ""])


def summary(rows: list[dict]) -> str:
    counts = {s: sum(r["status"] == s for r in rows) for s in ("PASS", "MISS", "NOT RUN")}
    return ", ".join(f"{n} {s}" for s, n in counts.items())
