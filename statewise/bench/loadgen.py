"""The load generator of ``statewise bench serve``: streaming clients on one asyncio loop.

Each client pulls requests from a shared queue and sends them back to back to
``POST /v1/completions`` (greedy, ``stream: true`` with ``include_usage``), recording when
the request was sent, when each server-sent text piece arrived, the streamed text, the
token count the server reports in ``usage`` and the finish reason. A request may be told to
disconnect after a number of pieces (the churn phase). Clients stop taking new requests once
the phase's time cap has passed, so a phase is bounded both in requests and in time.

The HTTP client is httpx (installed with the ``openai`` client, as the module ``httpx2`` in
its newer releases); everything runs on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

try:  # the openai client's newer releases ship httpx as ``httpx2``
    import httpx2 as httpx
except ImportError:  # pragma: no cover - depends on the installed openai release
    import httpx  # type: ignore[no-redef]


@dataclass(frozen=True)
class Job:
    """One request: its index (unique within a run), prompt token ids, max_tokens, and the
    number of text pieces after which the client disconnects (None: read to the end)."""

    index: int
    prompt: tuple[int, ...]
    max_tokens: int
    leave_after: int | None = None


@dataclass
class Outcome:
    """What a client saw of one request (times from ``time.perf_counter``)."""

    job: Job
    sent: float = math.nan
    ended: float = math.nan
    piece_times: list[float] = field(default_factory=list)
    text: str = ""
    completion_tokens: int | None = None
    finish_reason: str | None = None
    done: bool = False  # received ``data: [DONE]``
    left: bool = False  # the client disconnected on purpose (churn)
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        """Seconds from sending to the first text piece (None without one)."""
        return self.piece_times[0] - self.sent if self.piece_times else None

    @property
    def gaps(self) -> list[float]:
        """Seconds between consecutive text pieces."""
        t = self.piece_times
        return [b - a for a, b in zip(t, t[1:])]


def client(url: str, connections: int, timeout_s: float) -> httpx.AsyncClient:
    """An async HTTP client for ``url`` (loopback) with room for ``connections`` streams."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(
        base_url=url, limits=limits, timeout=httpx.Timeout(timeout_s), trust_env=False
    )


def completion_body(job: Job, stream: bool) -> dict[str, Any]:
    """The request body of ``job``: greedy, fixed max_tokens, prompt as token ids."""
    body: dict[str, Any] = {
        "prompt": list(job.prompt),
        "max_tokens": job.max_tokens,
        "temperature": 0,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def stream_one(http: httpx.AsyncClient, job: Job) -> Outcome:
    """Send ``job`` streamed and read its events (or leave after ``job.leave_after``
    pieces, closing the connection)."""
    out = Outcome(job)
    out.sent = time.perf_counter()
    try:
        async with http.stream("POST", "/v1/completions", json=completion_body(job, True)) as r:
            if r.status_code != 200:
                out.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return out
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    out.done = True
                    break
                chunk = json.loads(data)
                if chunk.get("usage"):
                    out.completion_tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices", []):
                    if choice.get("text"):
                        out.piece_times.append(time.perf_counter())
                        out.text += choice["text"]
                    if choice.get("finish_reason"):
                        out.finish_reason = choice["finish_reason"]
                if job.leave_after is not None and len(out.piece_times) >= job.leave_after:
                    out.left = True
                    break  # leaving the block closes the connection mid-stream
    except (httpx.HTTPError, ValueError, KeyError) as err:
        out.error = f"{type(err).__name__}: {err}"
    finally:
        out.ended = time.perf_counter()
    return out


async def complete_one(http: httpx.AsyncClient, job: Job) -> tuple[str, int]:
    """The non-streamed answer to ``job``: (text, completion_tokens)."""
    r = await http.post("/v1/completions", json=completion_body(job, False))
    if r.status_code != 200:
        raise RuntimeError(f"non-streamed request {job.index}: HTTP {r.status_code}: {r.text}")
    reply = r.json()
    return reply["choices"][0]["text"], reply["usage"]["completion_tokens"]


@dataclass
class Phase:
    """Every outcome of one phase, and the phase's wall-clock span."""

    outcomes: list[Outcome]
    started: float
    ended: float
    not_sent: int  # requests left in the queue when the time cap passed

    @property
    def seconds(self) -> float:
        return self.ended - self.started


async def run_phase(
    url: str, jobs: Sequence[Job], clients: int, time_cap_s: float, timeout_s: float = 120.0
) -> Phase:
    """``clients`` concurrent streaming clients taking ``jobs`` from one queue, each sending
    its next request as soon as the previous one ended, none starting after ``time_cap_s``."""
    queue = deque(jobs)
    outcomes: list[Outcome] = []
    async with client(url, clients + 4, timeout_s) as http:
        started = time.perf_counter()
        deadline = started + time_cap_s

        async def worker() -> None:
            while queue and time.perf_counter() < deadline:
                outcomes.append(await stream_one(http, queue.popleft()))

        await asyncio.gather(*(worker() for _ in range(clients)))
        ended = time.perf_counter()
    return Phase(outcomes, started, ended, len(queue))


async def reference_texts(url: str, jobs: Sequence[Job]) -> dict[int, tuple[str, int]]:
    """The non-streamed answers to ``jobs``, one request at a time."""
    async with client(url, 2, 120.0) as http:
        return {job.index: await complete_one(http, job) for job in jobs}


async def get_text(url: str, path: str) -> str:
    """The body of ``GET path`` (raises on a non-200)."""
    async with client(url, 1, 10.0) as http:
        r = await http.get(path)
        r.raise_for_status()
        return r.text
