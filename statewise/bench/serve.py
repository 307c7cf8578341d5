"""``statewise bench serve``: the HTTP server under load, against issue 19's serving targets.

For each chosen layer, a language model (vocab 256, ``d_model``, ``n_layers``, random
weights: speed does not depend on training) is saved as a checkpoint in a temporary
directory and served by ``python -m statewise serve`` in a subprocess on a free 127.0.0.1
port, with ``OMP_NUM_THREADS = server_threads`` (torch's intra-op threads; the server also
runs its event loop thread and one engine thread). The load generator runs in this process:
one Python thread, one asyncio loop (:mod:`statewise.bench.loadgen`). They share this
machine's cores, and the output says so.

Measured per layer:

- **Concurrency** ``c`` (each of ``concurrency``): ``c`` streaming clients, each sending
  ``requests_per_stream`` requests back to back (greedy, ``max_tokens`` tokens, distinct
  random prompts of ``prompt_tokens`` tokens, no new request after ``time_cap_s``).
  - ``tokens_per_s``: generated tokens (``usage.completion_tokens``) of the finished
    requests over the phase's wall-clock time (first request sent to last one ended).
  - ``ttft_p50/p99_ms``: time from sending a request to its first streamed text piece.
    A piece is sent when its bytes decode, so a token that starts a UTF-8 sequence waits
    for the next one.
  - ``itl_p50/p99_ms``: gaps between consecutive text pieces of a request (per-token
    latency; a piece holds one token, or more when the client fell behind).
  - ``tpot_p50/p99_ms``: per request, (last piece - first piece) / (tokens - 1).
  - ``state_bytes_per_stream``: the server's ``statewise_slot_state_bytes`` (/metrics).
  - ``rss_idle_mib``, ``rss_peak_mib``: the server's VmRSS before the phase and the
    highest of samples every 0.1 s during it.
  - checks: every request finished with ``length`` and ``max_tokens`` tokens; none lost
    (every request sent came back); on a sample, the streamed text equals the non-streamed
    answer to the same prompt, asked afterwards one request at a time (``mismatched``).
- **One at a time**: ``baseline_requests`` requests of the same shape (fresh prompts, so
  that neither side gets a prefix-cache hit) from one client. Target 1: tokens/s at 32
  streams over this.
- **Prefix cache**: a ``cache_prompt_tokens``-token prompt, sent once (a miss) and again
  (a hit), each streamed with ``max_tokens`` 1: time to first token and their ratio
  (target >= 20x); the server's cache hit counter must rise by one.
- **Churn**: ``churn_requests`` requests from ``churn_clients`` clients; every tenth one
  disconnects after its first piece. Counts of completed and cancelled requests, none lost
  or mixed up (a sample compared as above; a cancelled stream's text must begin its
  non-streamed answer), and afterwards the server's slots all free (/metrics: running 0,
  waiting 0) and its VmRSS back within ``RSS_SLACK`` of its level before the churn, plus
  what the prefix cache grew by (it keeps states by design, up to ``--state-cache-mb``).

Then, in this process with ``torch.set_num_threads(server_threads)``: transformers'
``generate`` (greedy, batch 1, ``use_cache=True``) on randomly initialised
``MambaForCausalLM`` and ``RecurrentGemmaForCausalLM`` of ``d_model`` and ``n_layers``
(saved with ``save_pretrained``, converted by ``statewise.convert.convert_hf``) against
statewise's engine (one slot, no prefix cache) on the converted weights. Decode tokens/s
= (N - 1) / (time for N new tokens - time for 1 new token), medians of ``hf_repeats`` after
a warm-up; target 2: statewise's over transformers' for Mamba >= 3x.

And, computed: softmax attention's KV cache per stream, 2 x n_layers x length x d_model x
4 bytes (float32), beside every registered recurrent layer's constant state,
``state_size`` x n_layers x 4 bytes.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from statewise.bench import loadgen
from statewise.bench.loadgen import Job, Outcome, Phase
from statewise.errors import ArgumentError

DEFAULT_LAYERS = ("mingru", "lstm", "mamba", "rwkv")
DEFAULT_CONCURRENCY = (1, 8, 32, 128)
TARGET_STREAMS = 32
KV_LENGTHS = (512, 1024, 2048, 4096, 8192)
RSS_SLACK = (0.10, 16 * 2**20)  # churn: RSS after <= before + cache growth + max(10%, 16 MiB)
VOCAB = 256
BYTES = 4  # float32


@dataclass
class Options:
    """What ``statewise bench serve`` runs (see the module doc)."""

    layers: list[str] = field(default_factory=lambda: list(DEFAULT_LAYERS))
    d_model: int = 512
    n_layers: int = 4
    concurrency: list[int] = field(default_factory=lambda: list(DEFAULT_CONCURRENCY))
    requests_per_stream: int = 2
    max_tokens: int = 64
    prompt_tokens: int = 16
    server_threads: int = 1
    time_cap_s: float = 60.0
    baseline_requests: int = 8
    check_sample: int = 8
    cache_prompt_tokens: int = 2048
    churn_requests: int = 500
    churn_clients: int = 32
    hf: bool = True
    hf_new_tokens: int = 64
    hf_repeats: int = 3
    seed: int = 0

    @classmethod
    def quick(cls) -> Options:
        """A small run for tests: d_model 64, 2 layers, concurrency 1 and 4, a handful of
        requests, a 256-token cached prompt, a churn of 20 requests."""
        return cls(
            layers=["mingru"],
            d_model=64,
            n_layers=2,
            concurrency=[1, 4],
            requests_per_stream=2,
            max_tokens=8,
            prompt_tokens=8,
            time_cap_s=20.0,
            baseline_requests=4,
            check_sample=4,
            cache_prompt_tokens=256,
            churn_requests=20,
            churn_clients=4,
            hf_new_tokens=8,
            hf_repeats=1,
        )

    def check(self) -> None:
        """ArgumentError naming the first option out of range."""
        from statewise.layers import registry

        for name in self.layers:
            registry.info(name)  # ArgumentError naming the choices
        ints = {
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "requests_per_stream": self.requests_per_stream,
            "max_tokens": self.max_tokens,
            "prompt_tokens": self.prompt_tokens,
            "server_threads": self.server_threads,
            "baseline_requests": self.baseline_requests,
            "cache_prompt_tokens": self.cache_prompt_tokens,
            "churn_clients": self.churn_clients,
            "hf_new_tokens": self.hf_new_tokens,
            "hf_repeats": self.hf_repeats,
        }
        for key, value in ints.items():
            if value < 1:
                raise ArgumentError(f"{key.replace('_', '-')} must be >= 1, got {value}")
        if not self.layers:
            raise ArgumentError("layers is empty")
        if not self.concurrency or min(self.concurrency) < 1 or max(self.concurrency) > 1024:
            raise ArgumentError(f"concurrency must be in 1..1024, got {self.concurrency}")
        if self.churn_requests < 0 or self.check_sample < 0:
            raise ArgumentError("churn-requests and check-sample must be >= 0")
        if not (math.isfinite(self.time_cap_s) and self.time_cap_s > 0):
            raise ArgumentError(f"time-cap-s must be a positive number, got {self.time_cap_s}")
        if self.hf_new_tokens < 2:
            raise ArgumentError("hf-new-tokens must be >= 2 (decode time is N tokens - 1)")


# ----------------------------------------------------------------- statistics
def quantile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (linear interpolation) of ``values``; None if empty."""
    if not values:
        return None
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1e3


# ----------------------------------------------------------------- the server
def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_random_checkpoint(out: Path, layer: str, d_model: int, n_layers: int, seed: int) -> Path:
    """A char_lm run directory holding a randomly initialised model (vocab 256)."""
    from statewise.models import ModelConfig, build_model
    from statewise.train import checkpoint
    from statewise.train.config import RunConfig

    run = RunConfig()
    run.model = ModelConfig(layer=layer, d_model=d_model, n_layers=n_layers, vocab_size=VOCAB)
    torch.manual_seed(seed)
    checkpoint.save(out, run, build_model(run.model).eval(), {"step": 0}, [])
    return out


def rss_bytes(pid: int) -> int | None:
    """VmRSS of process ``pid`` in bytes (None where /proc does not say)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text into {name or name{labels}: value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


@dataclass
class ServerProcess:
    """A running ``statewise serve`` subprocess."""

    proc: subprocess.Popen
    url: str
    log: Path

    def metrics(self) -> dict[str, float]:
        return parse_metrics(asyncio.run(loadgen.get_text(self.url, "/metrics")))

    def rss(self) -> int | None:
        return rss_bytes(self.proc.pid)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@contextmanager
def serve_checkpoint(
    ckpt: Path, threads: int, max_batch: int, max_prompt: int, workdir: Path
) -> Iterator[ServerProcess]:
    """``python -m statewise serve`` on ``ckpt`` at a free 127.0.0.1 port with
    ``OMP_NUM_THREADS=threads``; waits for /health; on exit, SIGTERM, wait (kill after
    20 s), always reaped."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    argv = [sys.executable, "-m", "statewise", "serve", "--checkpoint", str(ckpt)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--max-batch", str(max_batch)]
    argv += ["--max-prompt-tokens", str(max_prompt), "--grace-s", "2"]
    log = workdir / f"server-{port}.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT)
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"statewise serve exited with {proc.returncode}:\n{server.log_tail()}"
                )
            try:
                asyncio.run(loadgen.get_text(server.url, "/health"))
                break
            except Exception:  # not listening yet
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"statewise serve did not answer /health in 60 s:\n{server.log_tail()}"
                    ) from None
                time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# ----------------------------------------------------------------- requests
class Prompts:
    """Distinct random prompts: request ``i`` of a run gets its own token ids."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.next = 0

    def jobs(self, n: int, length: int, max_tokens: int, leave_every: int = 0) -> list[Job]:
        """``n`` new jobs; with ``leave_every`` k, every k-th leaves after its first piece."""
        out = []
        for _ in range(n):
            i = self.next
            self.next += 1
            rng = random.Random(self.seed * 1_000_003 + i)
            # the first two tokens spell the index, so no two prompts are equal
            ids = (i % VOCAB, (i // VOCAB) % VOCAB, *(rng.randrange(VOCAB) for _ in range(length)))
            leave = 1 if leave_every and (len(out) + 1) % leave_every == 0 else None
            out.append(Job(i, ids[:length] if length >= 2 else ids[:1], max_tokens, leave))
        return out


def _sample(outcomes: list[Outcome], k: int) -> list[Outcome]:
    """Up to ``k`` outcomes spread evenly over the list."""
    if k <= 0 or not outcomes:
        return []
    if len(outcomes) <= k:
        return list(outcomes)
    step = len(outcomes) / k
    return [outcomes[int(i * step)] for i in range(k)]


def check_texts(url: str, outcomes: list[Outcome], k: int) -> dict[str, Any]:
    """Compare a sample of streamed texts with non-streamed answers to the same prompts:
    a finished stream must equal its answer, a cancelled one must begin it."""
    sample = _sample(outcomes, k)
    refs = asyncio.run(loadgen.reference_texts(url, [o.job for o in sample]))
    bad = []
    for o in sample:
        text, _ = refs[o.job.index]
        ok = text.startswith(o.text) if o.left else o.text == text
        if not ok:
            common = next(
                (i for i, (a, b) in enumerate(zip(o.text, text)) if a != b),
                min(len(o.text), len(text)),
            )
            bad.append({"index": o.job.index, "left": o.left, "first_difference_at": common})
    return {"checked": len(sample), "mismatched": len(bad), "mismatches": bad}


def summarise(phase: Phase, jobs: list[Job]) -> dict[str, Any]:
    """Counts, tokens/s and latency quantiles of one phase (see the module doc)."""
    outs = phase.outcomes
    finished = [o for o in outs if o.done and not o.left and o.error is None]
    left = [o for o in outs if o.left]
    errors = [o for o in outs if o.error is not None]
    wrong = [
        o.job.index
        for o in finished
        if o.finish_reason != "length" or o.completion_tokens != o.job.max_tokens
    ]
    sent = len(jobs) - phase.not_sent
    tokens = sum(o.completion_tokens or 0 for o in finished)
    ttft = [o.ttft for o in outs if o.ttft is not None and not o.left]
    gaps = [g for o in finished for g in o.gaps]
    tpot = [
        (o.piece_times[-1] - o.piece_times[0]) / (o.completion_tokens - 1)
        for o in finished
        if len(o.piece_times) >= 2 and (o.completion_tokens or 0) > 1
    ]
    return {
        "requests": len(jobs),
        "sent": sent,
        "not_sent_time_cap": phase.not_sent,
        "completed": len(finished),
        "cancelled_by_client": len(left),
        "errors": len(errors),
        "first_errors": [o.error for o in errors[:3]],
        "lost": sent - len(outs) + sum(1 for o in outs if not o.done and not o.left),
        "wrong_token_count": len(wrong),
        "seconds": phase.seconds,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / phase.seconds if phase.seconds > 0 else None,
        "ttft_p50_ms": _ms(quantile(ttft, 0.5)),
        "ttft_p99_ms": _ms(quantile(ttft, 0.99)),
        "itl_p50_ms": _ms(quantile(gaps, 0.5)),
        "itl_p99_ms": _ms(quantile(gaps, 0.99)),
        "tpot_p50_ms": _ms(quantile(tpot, 0.5)),
        "tpot_p99_ms": _ms(quantile(tpot, 0.99)),
    }


def timed_phase(
    server: ServerProcess, jobs: list[Job], clients: int, cap_s: float
) -> tuple[Phase, int | None]:
    """Run a phase while sampling the server's VmRSS every 0.1 s; (phase, peak RSS)."""

    async def both() -> tuple[Phase, int | None]:
        peak: list[int] = []
        stop = asyncio.Event()

        async def sampler() -> None:
            while not stop.is_set():
                rss = server.rss()
                if rss is not None:
                    peak.append(rss)
                try:
                    await asyncio.wait_for(stop.wait(), 0.1)
                except asyncio.TimeoutError:
                    pass

        task = asyncio.create_task(sampler())
        try:
            phase = await loadgen.run_phase(server.url, jobs, clients, cap_s)
        finally:
            stop.set()
            await task
        return phase, max(peak) if peak else None

    return asyncio.run(both())


def _mib(n: int | None) -> float | None:
    return None if n is None else n / 2**20


def wait_idle(server: ServerProcess, timeout_s: float = 15.0) -> dict[str, float]:
    """/metrics once no request runs or waits (or after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        m = server.metrics()
        idle = m.get("statewise_requests_running") == 0 and m.get("statewise_requests_waiting") == 0
        if idle or time.monotonic() > deadline:
            return m
        time.sleep(0.1)


# ----------------------------------------------------------------- one layer
def bench_layer(opts: Options, layer: str, workdir: Path, log: Any) -> dict[str, Any]:
    """Every server measurement of ``layer`` (see the module doc)."""
    ckpt = save_random_checkpoint(
        workdir / f"{layer}-d{opts.d_model}", layer, opts.d_model, opts.n_layers, opts.seed
    )
    prompts = Prompts(opts.seed)
    max_batch = max(max(opts.concurrency), opts.churn_clients)
    max_prompt = max(opts.prompt_tokens, opts.cache_prompt_tokens)
    result: dict[str, Any] = {"layer": layer, "concurrency": [], "max_batch": max_batch}
    with serve_checkpoint(ckpt, opts.server_threads, max_batch, max_prompt, workdir) as server:
        idle = server.metrics()
        result["state_bytes_per_stream"] = int(idle["statewise_slot_state_bytes"])
        result["fused_decode_max_batch"] = int(idle["statewise_fused_decode_max_batch"])
        result["rss_start_mib"] = _mib(server.rss())
        # warm-up: the first requests pay for lazy initialisation and compilation
        warm = prompts.jobs(2, opts.prompt_tokens, opts.max_tokens)
        loadgen_phase = timed_phase(server, warm, 2, opts.time_cap_s)[0]
        if any(o.error for o in loadgen_phase.outcomes):
            raise RuntimeError(f"{layer}: warm-up failed: {loadgen_phase.outcomes[0].error}")
        for c in opts.concurrency:
            log(f"{layer}: {c} concurrent streams")
            jobs = prompts.jobs(c * opts.requests_per_stream, opts.prompt_tokens, opts.max_tokens)
            rss_idle = server.rss()
            phase, peak = timed_phase(server, jobs, c, opts.time_cap_s)
            row = {"streams": c, **summarise(phase, jobs)}
            row["state_bytes_per_stream"] = result["state_bytes_per_stream"]
            row["rss_idle_mib"], row["rss_peak_mib"] = _mib(rss_idle), _mib(peak)
            row.update(check_texts(server.url, phase.outcomes, opts.check_sample))
            result["concurrency"].append(row)
        log(f"{layer}: {opts.baseline_requests} requests one at a time")
        jobs = prompts.jobs(opts.baseline_requests, opts.prompt_tokens, opts.max_tokens)
        phase, _ = timed_phase(server, jobs, 1, opts.time_cap_s)
        result["one_at_a_time"] = summarise(phase, jobs)
        log(f"{layer}: prefix cache, a {opts.cache_prompt_tokens}-token prompt twice")
        result["prefix_cache"] = bench_prefix_cache(server, prompts, opts)
        if opts.churn_requests:
            log(f"{layer}: churn, {opts.churn_requests} requests from {opts.churn_clients} clients")
            result["churn"] = bench_churn(server, prompts, opts)
    return result


def bench_prefix_cache(server: ServerProcess, prompts: Prompts, opts: Options) -> dict[str, Any]:
    """Time to first token of one long prompt sent twice: a miss, then a hit."""
    (job,) = prompts.jobs(1, opts.cache_prompt_tokens, 1)
    before = wait_idle(server)
    times = []
    for _ in range(2):
        out = asyncio.run(loadgen.run_phase(server.url, [job], 1, opts.time_cap_s)).outcomes[0]
        if out.error or out.ttft is None and not out.done:
            raise RuntimeError(f"the prefix-cache request failed: {out.error}")
        # max_tokens 1: the piece arrives with the finish; a held-back byte arrives then too
        times.append(out.ttft if out.ttft is not None else out.ended - out.sent)
    after = server.metrics()
    hits = after["statewise_cache_hits_total"] - before["statewise_cache_hits_total"]
    misses = after["statewise_cache_misses_total"] - before["statewise_cache_misses_total"]
    return {
        "prompt_tokens": opts.cache_prompt_tokens,
        "ttft_miss_ms": times[0] * 1e3,
        "ttft_hit_ms": times[1] * 1e3,
        "ratio": times[0] / times[1],
        "cache_hits": int(hits),
        "cache_misses": int(misses),
    }


def bench_churn(server: ServerProcess, prompts: Prompts, opts: Options) -> dict[str, Any]:
    """Many requests, a tenth of them abandoned mid-stream; then the server at rest."""
    before = wait_idle(server)
    rss_before = server.rss()
    max_tokens = max(opts.max_tokens, 4)  # room to leave mid-stream
    jobs = prompts.jobs(opts.churn_requests, opts.prompt_tokens, max_tokens, leave_every=10)
    phase, peak = timed_phase(server, jobs, opts.churn_clients, opts.time_cap_s * 5)
    row = summarise(phase, jobs)
    after = wait_idle(server)
    time.sleep(0.5)  # let the allocator settle before reading RSS
    rss_after = server.rss()
    left = [o for o in phase.outcomes if o.left]
    done = [o for o in phase.outcomes if not o.left]
    checks_done = check_texts(server.url, done, opts.check_sample)
    checks_left = check_texts(server.url, left, max(1, opts.check_sample // 2))
    cache_growth = after["statewise_cache_bytes"] - before["statewise_cache_bytes"]
    finished = {
        reason: after.get(f'statewise_requests_finished_total{{reason="{reason}"}}', 0)
        - before.get(f'statewise_requests_finished_total{{reason="{reason}"}}', 0)
        for reason in ("length", "stop", "cancelled")
    }
    row.update(
        {
            "clients": opts.churn_clients,
            "max_tokens": max_tokens,
            "server_finished": {k: int(v) for k, v in finished.items()},
            "running_after": int(after["statewise_requests_running"]),
            "waiting_after": int(after["statewise_requests_waiting"]),
            "state_bytes_after": int(after["statewise_state_bytes"]),
            "cache_bytes_growth": int(cache_growth),
            "rss_before_mib": _mib(rss_before),
            "rss_peak_mib": _mib(peak),
            "rss_after_mib": _mib(rss_after),
            "checked": checks_done["checked"] + checks_left["checked"],
            "mismatched": checks_done["mismatched"] + checks_left["mismatched"],
            "mismatches": checks_done["mismatches"] + checks_left["mismatches"],
        }
    )
    if rss_before is not None and rss_after is not None:
        slack = max(RSS_SLACK[0] * rss_before, RSS_SLACK[1]) + max(cache_growth, 0)
        row["rss_back_to_idle"] = rss_after <= rss_before + slack
    else:
        row["rss_back_to_idle"] = None
    return row


# ----------------------------------------------------------------- transformers
def _decode_tps(run: Any, n: int, repeats: int) -> float:
    """(n - 1) / (median time of run(n) - median time of run(1)), after a warm-up."""
    run(n)

    def median(k: int) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            run(k)
            times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2]

    decode = median(n) - median(1)
    if decode <= 0:
        raise RuntimeError("timing noise exceeded the decode time; use more new tokens")
    return (n - 1) / decode


def _hf_models(d_model: int, n_layers: int) -> list[tuple[str, Any]]:
    """Randomly initialised transformers models of the two converted families."""
    from transformers import (
        MambaConfig,
        MambaForCausalLM,
        RecurrentGemmaConfig,
        RecurrentGemmaForCausalLM,
    )

    heads = max(1, d_model // 64)
    return [
        (
            "mamba",
            lambda: MambaForCausalLM(
                MambaConfig(vocab_size=VOCAB, hidden_size=d_model, num_hidden_layers=n_layers)
            ),
        ),
        (
            "recurrentgemma",
            lambda: RecurrentGemmaForCausalLM(
                RecurrentGemmaConfig(
                    vocab_size=VOCAB,
                    hidden_size=d_model,
                    intermediate_size=3 * d_model,
                    num_hidden_layers=n_layers,
                    num_attention_heads=heads,
                    lru_width=d_model,
                    attention_window_size=2048,
                    # transformers' generate needs one attention block among them
                    block_types=["recurrent", "recurrent", "attention"]
                    if n_layers >= 3
                    else ["recurrent", "attention"],
                )
            ),
        ),
    ]


def bench_transformers(opts: Options, workdir: Path, log: Any) -> list[dict[str, Any]]:
    """Decode tokens/s at batch 1: transformers' generate against statewise's engine on the
    same converted weights (see the module doc); a row with ``error`` where it cannot run."""
    rows = []
    try:
        makers = _hf_models(opts.d_model, opts.n_layers)
    except ImportError as err:
        return [{"model": "mamba", "error": f"transformers cannot be imported: {err}"}]
    threads = torch.get_num_threads()
    torch.set_num_threads(opts.server_threads)
    try:
        for name, make in makers:
            log(f"transformers {name}: generate against the engine at batch 1")
            rows.append(_compare_one(name, make, opts, workdir))
    finally:
        torch.set_num_threads(threads)
    return rows


def _compare_one(name: str, make: Any, opts: Options, workdir: Path) -> dict[str, Any]:
    """One row of :func:`bench_transformers` (``error`` where it cannot run)."""
    from statewise.convert import convert_hf
    from statewise.infer.engine import Engine
    from statewise.train import checkpoint

    row: dict[str, Any] = {"model": name, "d_model": opts.d_model, "n_layers": opts.n_layers}
    try:
        torch.manual_seed(opts.seed)
        hf = make().eval()
        hf.save_pretrained(workdir / f"hf-{name}")
        convert_hf(workdir / f"hf-{name}", workdir / f"hf-{name}-statewise")
        ours = checkpoint.read(workdir / f"hf-{name}-statewise", quiet=True).model()
        engine = Engine(ours, max_batch=1, state_cache_mb=0)
        prompt = [random.Random(opts.seed).randrange(VOCAB) for _ in range(16)]
        ids = torch.tensor([prompt])
        hf_tokens: list[int] = []
        our_tokens: list[int] = []

        def run_hf(n: int) -> None:
            with torch.no_grad():
                out = hf.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=0,
                )
            hf_tokens[:] = out[0, ids.shape[1] :].tolist()

        def run_ours(n: int) -> None:
            stream = engine.submit(prompt, max_tokens=n, temperature=0)
            stream.result()
            our_tokens[:] = stream.tokens

        n, reps = opts.hf_new_tokens, opts.hf_repeats
        row["new_tokens"] = n
        row["transformers_tokens_per_s"] = _decode_tps(run_hf, n, reps)
        row["statewise_tokens_per_s"] = _decode_tps(run_ours, n, reps)
        run_hf(n)
        run_ours(n)
        row["same_tokens"] = hf_tokens == our_tokens
        row["ratio"] = row["statewise_tokens_per_s"] / row["transformers_tokens_per_s"]
    except Exception as err:  # report why this comparison cannot run, keep the rest
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
    return row


# ----------------------------------------------------------------- memory
def memory_table(d_model: int, n_layers: int) -> dict[str, Any]:
    """KV-cache bytes per stream of softmax attention by length, beside every registered
    recurrent layer's constant state bytes (float32)."""
    from statewise.layers import registry

    kv = {str(n): 2 * n_layers * n * d_model * BYTES for n in KV_LENGTHS}
    flat = {}
    for name in registry.names():
        if registry.info(name).family == "attention":
            continue
        try:
            flat[name] = registry.get(name, d_model).state_size * n_layers * BYTES
        except Exception as err:  # a layer that cannot be built at this width
            flat[name] = f"cannot build at d_model {d_model}: {err}"
    return {"d_model": d_model, "n_layers": n_layers, "attention_kv_bytes": kv, "state_bytes": flat}


# ----------------------------------------------------------------- targets
def judge(result: dict[str, Any]) -> list[dict[str, Any]]:
    """PASS/MISS of each issue-19 target that this run measured."""
    out = []
    for layer in result["layers"]:
        if "error" in layer:
            continue
        rows = layer["concurrency"]
        at = [r for r in rows if r["streams"] == TARGET_STREAMS] or rows[-1:]
        base = layer["one_at_a_time"]["tokens_per_s"]
        if at and base and at[0]["tokens_per_s"]:
            ratio = at[0]["tokens_per_s"] / base
            note = (
                "" if at[0]["streams"] == TARGET_STREAMS else f" (measured at {at[0]['streams']})"
            )
            out.append(
                _target(
                    f"{layer['layer']}: {TARGET_STREAMS} streams / one at a time{note}", ratio, 10
                )
            )
        cache = layer.get("prefix_cache")
        if cache:
            what = f"{layer['layer']}: {cache['prompt_tokens']}-token prompt TTFT miss / hit"
            out.append(_target(what, cache["ratio"], 20))
        churn = layer.get("churn")
        if churn:
            ok = (
                churn["lost"] == 0
                and churn["errors"] == 0
                and churn["mismatched"] == 0
                and churn["wrong_token_count"] == 0
                and churn["running_after"] == 0
                and churn["waiting_after"] == 0
                and churn["rss_back_to_idle"] is not False
            )
            what = (
                f"{layer['layer']}: churn of {churn['requests']}: none lost or mixed, slots free, "
                "RSS back"
            )
            out.append({"target": what, "ratio": None, "threshold": None, "verdict": _pf(ok)})
    for row in result.get("transformers", []):
        if row.get("model") == "mamba" and "ratio" in row:
            out.append(_target("mamba: decode batch 1, statewise / transformers", row["ratio"], 3))
    return out


def _pf(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _target(what: str, ratio: float, threshold: float) -> dict[str, Any]:
    return {
        "target": what,
        "ratio": ratio,
        "threshold": threshold,
        "verdict": _pf(ratio >= threshold),
    }


# ----------------------------------------------------------------- the run
def run_serve_bench(opts: Options, log: Any = None) -> dict[str, Any]:
    """Every measurement of the module doc; a JSON-ready dict."""
    opts.check()
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    result: dict[str, Any] = {
        "options": asdict(opts),
        "threads": {
            "server_torch_threads": opts.server_threads,
            "server_other_threads": "the uvicorn event loop and one engine thread",
            "load_generator_threads": 1,
            "load_generator": "one asyncio loop in the bench process (httpx)",
            "cpu_cores": os.cpu_count(),
            "note": "server and load generator share these cores",
        },
        "layers": [],
    }
    with tempfile.TemporaryDirectory(prefix="statewise-bench-serve-") as tmp:
        for layer in opts.layers:
            try:
                result["layers"].append(bench_layer(opts, layer, Path(tmp), log))
            except Exception as err:  # keep the other layers; say what went wrong
                result["layers"].append({"layer": layer, "error": f"{type(err).__name__}: {err}"})
        result["transformers"] = bench_transformers(opts, Path(tmp), log) if opts.hf else []
    result["memory"] = memory_table(opts.d_model, opts.n_layers)
    result["targets"] = judge(result)
    return result


# ----------------------------------------------------------------- the table
def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return lines


def _kib(n: Any) -> str:
    return f"{n / 1024:.1f}" if isinstance(n, (int, float)) else str(n)


def format_report(result: dict[str, Any]) -> str:
    """The readable report of :func:`run_serve_bench`."""
    o, t = result["options"], result["threads"]
    lines = [
        f"statewise bench serve: d_model {o['d_model']}, {o['n_layers']} layers, vocab {VOCAB}, "
        f"random weights, float32; prompts of {o['prompt_tokens']} tokens, "
        f"{o['max_tokens']} new tokens, greedy",
        f"threads: server torch {t['server_torch_threads']} (+ event loop and engine thread), "
        f"load generator {t['load_generator_threads']} (asyncio); {t['cpu_cores']} cores shared",
        "",
    ]
    header = [
        "layer",
        "streams",
        "ok/sent",
        "tok/s",
        "TTFT p50",
        "p99",
        "ITL p50",
        "p99",
        "state KiB/stream",
        "RSS MiB",
        "mixed",
        "fused up to",
    ]
    rows = []
    for layer in result["layers"]:
        if "error" in layer:
            lines.append(f"{layer['layer']}: ERROR {layer['error']}")
            continue
        for r in layer["concurrency"] + [{**layer["one_at_a_time"], "streams": "1 by 1"}]:
            rows.append(
                [
                    layer["layer"],
                    str(r["streams"]),
                    f"{r['completed']}/{r['sent']}",
                    _f(r["tokens_per_s"]),
                    _f(r["ttft_p50_ms"]),
                    _f(r["ttft_p99_ms"]),
                    _f(r["itl_p50_ms"]),
                    _f(r["itl_p99_ms"]),
                    _kib(layer["state_bytes_per_stream"]),
                    _f(r.get("rss_peak_mib")),
                    f"{r['mismatched']}/{r['checked']}" if "checked" in r else "-",
                    str(layer.get("fused_decode_max_batch", "-")),
                ]
            )
    if rows:
        lines += [
            "times in ms; ITL: gaps between streamed pieces; mixed: sampled streams "
            "differing from the non-streamed answer; fused up to: the server runs decode "
            "steps of up to this many rows fused (statewise serve --decode auto)",
            *_table(header, rows),
            "",
        ]
    rows = []
    for layer in result["layers"]:
        c = layer.get("prefix_cache")
        if c:
            rows.append(
                [
                    layer["layer"],
                    str(c["prompt_tokens"]),
                    _f(c["ttft_miss_ms"]),
                    _f(c["ttft_hit_ms"]),
                    _f(c["ratio"]),
                    f"{c['cache_hits']}",
                ]
            )
    if rows:
        lines += [
            "prefix cache: one prompt twice",
            *_table(["layer", "prompt", "TTFT miss ms", "hit ms", "ratio", "hits"], rows),
            "",
        ]
    rows = []
    for layer in result["layers"]:
        c = layer.get("churn")
        if c:
            rows.append(
                [
                    layer["layer"],
                    f"{c['requests']}/{c['clients']}",
                    str(c["completed"]),
                    str(c["cancelled_by_client"]),
                    str(c["server_finished"]["cancelled"]),
                    str(c["lost"]),
                    f"{c['mismatched']}/{c['checked']}",
                    str(c["running_after"]),
                    _f(c["rss_before_mib"]),
                    _f(c["rss_peak_mib"]),
                    _f(c["rss_after_mib"]),
                    _kib(c["cache_bytes_growth"]),
                ]
            )
    if rows:
        lines += [
            "churn: a tenth of the clients leave after their first piece",
            *_table(
                [
                    "layer",
                    "requests/clients",
                    "completed",
                    "left",
                    "server cancelled",
                    "lost",
                    "mixed",
                    "running after",
                    "RSS before",
                    "peak",
                    "after",
                    "cache KiB grew",
                ],
                rows,
            ),
            "",
        ]
    rows = []
    for r in result.get("transformers", []):
        if "error" in r:
            rows.append([r["model"], "-", "-", "-", "-", r["error"][:80]])
        else:
            rows.append(
                [
                    r["model"],
                    _f(r["transformers_tokens_per_s"]),
                    _f(r["statewise_tokens_per_s"]),
                    _f(r["ratio"], 2),
                    str(r["same_tokens"]),
                    "",
                ]
            )
    if rows:
        lines += [
            f"decode at batch 1, {o['hf_new_tokens']} new tokens, "
            f"{o['server_threads']} torch thread(s): transformers generate vs the engine",
            *_table(["model", "HF tok/s", "statewise tok/s", "ratio", "same tokens", "note"], rows),
            "",
        ]
    mem = result["memory"]
    kv = mem["attention_kv_bytes"]
    lines.append(
        f"memory per stream, KiB (d_model {mem['d_model']}, {mem['n_layers']} layers, float32)"
    )
    rows = [["attention KV cache", *(_kib(kv[k]) for k in kv)]]
    rows += [[name, *([_kib(b)] * len(kv))] for name, b in mem["state_bytes"].items()]
    lines += [*_table(["layer", *(f"len {k}" for k in kv)], rows), ""]
    lines.append("targets")
    for tg in result["targets"]:
        ratio = "" if tg["ratio"] is None else f" {tg['ratio']:.2f}x (target >= {tg['threshold']}x)"
        lines.append(f"  {tg['verdict']}  {tg['target']}{ratio}")
    return "\n".join(lines)
