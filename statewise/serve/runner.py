"""The engine's one driver in a server: a background thread that owns the engine.

Request handlers run on the server's asyncio loop and never step the engine or wait on its
lock. They hand requests to the runner (:meth:`Runner.submit`, :meth:`Runner.cancel`),
and the runner thread, between ticks, submits and cancels them, steps the engine while it
is busy, sleeps on an event when it is idle, and after every tick sends the loop a
consistent snapshot (text, done, finish reason, token count) of each stream that
changed. A handler reads a stream only through its :class:`Job`'s snapshots, so it never
sees a tick half done (e.g. a stop string appended and not yet cut off).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from statewise.infer.engine import Engine, Stream, ready_text
from statewise.ops.tree import tree_leaves

log = logging.getLogger("statewise.serve")


class Snapshot(NamedTuple):
    """One stream as it stood between two ticks."""

    text: str
    done: bool
    finish_reason: str | None
    completion_tokens: int
    cached_tokens: int


_EMPTY = Snapshot("", False, None, 0, 0)


@dataclass(eq=False)
class Job:
    """A request's stream as the asyncio side sees it: the newest snapshot, an event set
    whenever a new one arrives, and how many characters were handed out."""

    prompt_tokens: int
    stops: tuple[str, ...]
    stream: Stream | None = None
    snapshot: Snapshot = _EMPTY
    event: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    published: Snapshot = _EMPTY  # the runner's own record of what it last sent

    def ready_text(self) -> str:
        """New text of the newest snapshot that no stop string can still claim."""
        return ready_text(self.snapshot.text, self.sent, self.snapshot.done, self.stops)

    async def pieces(self) -> AsyncIterator[str]:
        """The generated text in pieces as it becomes ready, until the stream is done."""
        while True:
            ready = self.ready_text()
            if ready:
                self.sent += len(ready)
                yield ready
                continue
            if self.snapshot.done:
                return
            self.event.clear()
            await self.event.wait()

    async def wait_done(
        self, gone: Callable[[], Awaitable[bool]] | None = None, poll_s: float = 0.5
    ) -> Snapshot:
        """The final snapshot. Every ``poll_s`` seconds, awaits ``gone()`` and returns the
        current snapshot early if it is true (a client that left)."""
        loop = asyncio.get_running_loop()
        next_check = loop.time() + poll_s
        while not self.snapshot.done:
            self.event.clear()
            try:
                await asyncio.wait_for(self.event.wait(), max(next_check - loop.time(), 0))
            except asyncio.TimeoutError:
                pass
            if gone is not None and loop.time() >= next_check:
                if await gone():
                    break
                next_check = loop.time() + poll_s
        return self.snapshot


class Runner:
    """Owns ``engine`` from a background thread (see the module doc). Counts the prompt
    and generated tokens of the requests it ran, and how each request finished."""

    def __init__(self, engine: Engine, idle_wait_s: float = 1.0) -> None:
        self.engine = engine
        self.idle_wait_s = idle_wait_s
        self.slot_state_bytes = (
            sum(t.numel() * t.element_size() for t in tree_leaves(engine.state)) // engine.max_batch
        )
        self.prompt_tokens = self.generated_tokens = 0
        self.finished: dict[str, int] = {}
        self._inbox: deque[tuple[str, object]] = deque()
        self._jobs: list[Job] = []
        self._wake = threading.Event()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------ asyncio side (the loop)
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the thread; snapshots are delivered on ``loop``."""
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="statewise-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Cancel every request left and end the thread (joined within ``timeout_s``)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    async def submit(self, prompt: Sequence[int], sampling: dict[str, object]) -> Job:
        """Queue ``prompt`` (token ids) with ``sampling`` (the engine's Sampling fields);
        raises what ``engine.submit`` raises for a bad request (ArgumentError)."""
        stops = tuple(sampling.get("stop", ()))  # type: ignore[arg-type]
        job = Job(prompt_tokens=len(prompt), stops=stops)
        accepted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inbox.append(("submit", (job, list(prompt), sampling, accepted)))
        self._wake.set()
        try:
            await accepted
        except asyncio.CancelledError:  # the client left while the request was queued
            self.cancel(job)
            raise
        return job

    @property
    def queued(self) -> int:
        """Requests handed to the runner that the engine has not taken yet."""
        return sum(1 for kind, _ in list(self._inbox) if kind == "submit")

    def cancel(self, job: Job) -> None:
        """Cancel ``job``'s stream and free its slot (never blocks; any thread)."""
        self._inbox.append(("cancel", job))
        self._wake.set()

    def cancel_all(self) -> None:
        """Cancel every request the runner holds (a shutdown past its grace period)."""
        self._inbox.append(("cancel_all", None))
        self._wake.set()

    @property
    def active(self) -> int:
        """Requests submitted and not yet finished."""
        return len(self._jobs)

    # ------------------------------------------------------ the runner thread
    def _run(self) -> None:
        while True:
            self._wake.clear()  # before reading the inbox: a later append wakes us
            changed = self._read_inbox()
            if self._stopping:
                for job in self._jobs:
                    self.engine.cancel(job.stream)
                self._publish()
                return
            if self.engine.busy:
                try:
                    self.engine.step()
                except Exception:  # a bug: fail the requests, keep serving new ones
                    log.exception("statewise: the engine failed a tick; cancelling its requests")
                    for job in self._jobs:
                        self.engine.cancel(job.stream)
                self._publish()
            else:
                if changed:
                    self._publish()
                self._wake.wait(self.idle_wait_s)

    def _read_inbox(self) -> bool:
        changed = False
        while self._inbox:
            kind, item = self._inbox.popleft()
            changed = True
            if kind == "submit":
                job, prompt, sampling, accepted = item  # type: ignore[misc]
                try:
                    job.stream = self.engine.submit(prompt, **sampling)
                except Exception as err:  # a bad request: the handler answers 4xx
                    self._call(_resolve, accepted, err)
                    continue
                self.prompt_tokens += len(prompt)
                self._jobs.append(job)
                self._call(_resolve, accepted, None)
            elif kind == "cancel":
                if item.stream is not None:  # type: ignore[union-attr]
                    self.engine.cancel(item.stream)  # type: ignore[union-attr]
            else:
                for job in self._jobs:
                    self.engine.cancel(job.stream)
        return changed

    def _publish(self) -> None:
        """Send the loop a snapshot of every stream that changed; forget finished ones."""
        updates, running = [], []
        for job in self._jobs:
            s = job.stream
            snap = Snapshot(s.text, s.done, s.finish_reason, len(s.tokens), s.cached_tokens)
            if snap != job.published:
                job.published = snap
                updates.append((job, snap))
            if s.done:
                self.generated_tokens += len(s.tokens)
                self.finished[s.finish_reason] = self.finished.get(s.finish_reason, 0) + 1
            else:
                running.append(job)
        self._jobs = running
        if updates:
            self._call(_deliver, updates)

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _resolve(future: asyncio.Future[None], err: Exception | None) -> None:
    if future.done():  # the handler was cancelled (its client left)
        return
    if err is None:
        future.set_result(None)
    else:
        future.set_exception(err)


def _deliver(updates: list[tuple[Job, Snapshot]]) -> None:
    for job, snap in updates:
        job.snapshot = snap
        job.event.set()
