"""The batching engine: many generation requests at once over a pool of recurrent state
slots, with continuous batching (E-BATCH: a request joins the moment a slot is free).

    engine = statewise.Engine(model, tokenizer, max_batch=32)
    stream = engine.submit("def ", max_tokens=64, temperature=0.8, seed=1)
    for piece in stream:          # drives the engine; other requests advance too
        print(piece, end="")
    texts = engine.generate_many(["a", "b"], max_tokens=16)

The state of every admitted request lives in one row (its slot) of a state preallocated
for ``max_batch`` streams. Each tick (:meth:`Engine.step`):

1. admits waiting requests into free slots, starting each from the initial state or from
   the longest cached prefix of its prompt (statewise.infer.prefix_cache);
2. prefills ONE chunk of the oldest request still reading its prompt, in the model's
   parallel mode; chunk boundaries are fixed per request (multiples of ``prefill_chunk``
   from the prompt's start), so a prompt is read the same way whatever else runs, and a
   long prompt takes several ticks in which running streams keep decoding;
3. runs ONE batched ``model.step`` over every decoding request: it gathers their slots'
   states, steps, scatters the states back, and draws each request's next token from its
   own row with its own sampling settings and its own random generator.

A request that finishes (max_tokens, a stop string) frees its slot at once; nothing pads
and nothing waits for the batch to drain.

The decode step runs fused (numba kernels per row, statewise.infer.fused) or as the
batched PyTorch ``model.step``, by batch size: ``decode="auto"`` measures both on the model
when the engine is made and runs the fused step up to the batch size where PyTorch's GEMMs
overtake it (statewise.infer.decode_path); ``"fused"`` and ``"torch"`` force one path.

Batch invariance: every step of a request's own arithmetic is the same alone or in a
batch except the PyTorch decode step's GEMMs, whose blocking (and so rounding) depends on
the number of rows: 2e-7 to 6e-7 relative in float32 here. In float64 that rounding is
~1e-16, and the fused step has none (each row's dot products run on their own), so with
float64 weights, or with ``decode="fused"``, a request's tokens are the same alone or among
many (tests/infer/test_engine.py).
"""

from __future__ import annotations

import secrets
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from statewise.errors import ArgumentError, finite_number
from statewise.infer.decode_path import choose_decode_path
from statewise.infer.prefix_cache import PrefixCache
from statewise.infer.sessions import SessionStore
from statewise.infer.state_io import check_state
from statewise.models import LanguageModel
from statewise.models.sampling import check_sampling, sample_next
from statewise.ops.tree import State, tree_leaves, tree_map
from statewise.tasks.tokenizer import ByteTokenizer, Tokenizer


@dataclass(frozen=True)
class Sampling:
    """How one request draws its tokens: temperature (0: greedy), top_k, top_p, a seed for
    its own generator (None: a random one), at most max_tokens tokens, and stop strings
    (generation ends before the first of them, which is not part of the text)."""

    max_tokens: int = 128
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_sampling(self.temperature, self.top_k, self.top_p)
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int):
            raise ArgumentError(f"max_tokens must be an int, got {self.max_tokens!r}")
        if self.max_tokens < 0:
            raise ArgumentError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ArgumentError(f"seed must be an int, got {self.seed!r}")
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise ArgumentError(f"stop must be a list of non-empty strings, got {self.stop!r}")


@dataclass(eq=False)  # a stream is itself: two with the same fields are still two
class Stream:
    """One request: its tokens and text as they are generated. Iterating it yields text
    pieces, stepping the engine while this request has none ready."""

    engine: Engine
    prompt: list[int]
    sampling: Sampling
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    done: bool = False
    finish_reason: str | None = None  # "length", "stop" or "cancelled"
    cached_tokens: int = 0  # prompt tokens whose prefill the prefix cache skipped
    state: State | None = None  # with keep_state: the state after every token, once done
    state_tokens: int = 0  # tokens that state has read (a session's earlier ones included)
    session: str | None = None
    keep_state: bool = False
    _start: State | None = None  # a given initial state (batch 1) instead of a fresh one
    _sent: int = 0  # characters of text handed out by iteration
    _pos: int = 0  # prompt tokens read
    _slot: int = -1
    _next: int = -1  # the sampled token the next decode step feeds
    _generator: torch.Generator | None = None
    _decoder: object = None

    def __iter__(self) -> Iterator[str]:
        while True:
            ready = self._ready_text()
            if ready:
                self._sent += len(ready)
                yield ready
            elif self.done:
                return
            else:
                self.engine.step()

    def result(self) -> str:
        """The whole generated text, once the request is finished (drives the engine)."""
        while not self.done:
            self.engine.step()
        return self.text

    def cancel(self) -> None:
        """Stop this request now and free its slot (a client that went away)."""
        self.engine.cancel(self)

    def _ready_text(self) -> str:
        return ready_text(self.text, self._sent, self.done, self.sampling.stop)


def ready_text(text: str, sent: int, done: bool, stops: Sequence[str]) -> str:
    """The text after the first ``sent`` characters that no stop string can still claim:
    all of it once done, else all but the last (longest stop - 1) characters, which a
    stop string may yet begin (it is cut, and never shown, once it completes)."""
    end = len(text)
    if not done and stops:
        end -= max(len(s) for s in stops) - 1
    return text[sent : max(end, sent)]


class Engine:
    """Continuous batching of generation requests over ``max_batch`` state slots of a
    language model (see the module doc). ``state_cache_mb`` bounds the prefix state cache
    (0: no cache). ``decode``: "auto", "fused" or "torch", the decode step's path (see
    the module doc; ``engine.decode_path.describe()`` says what was chosen). Thread-safe:
    submit and step may be called from different threads."""

    def __init__(
        self,
        model: LanguageModel,
        tokenizer: Tokenizer | None = None,
        max_batch: int = 32,
        prefill_chunk: int = 256,
        state_cache_mb: float = 64.0,
        session_dir: str | Path | None = None,
        decode: str = "auto",
    ) -> None:
        if not isinstance(model, LanguageModel):
            raise ArgumentError('the engine serves language models (model.head = "lm")')
        for name, value in (("max_batch", max_batch), ("prefill_chunk", prefill_chunk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ArgumentError(f"{name} must be a positive int, got {value!r}")
        if finite_number("state_cache_mb", state_cache_mb) < 0:
            raise ArgumentError(f"state_cache_mb must be >= 0, got {state_cache_mb}")
        self.model = model.eval()
        self.tokenizer = tokenizer or ByteTokenizer()
        if model.config.vocab_size < self.tokenizer.vocab_size:
            raise ArgumentError(
                f"the model has {model.config.vocab_size} tokens, fewer than its tokenizer's "
                f"{self.tokenizer.vocab_size}"
            )
        self.max_batch, self.prefill_chunk = max_batch, prefill_chunk
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.state = model.init_state(max_batch, self.device, self.dtype)
        self._fresh = model.init_state(1, self.device, self.dtype)
        self.cache = PrefixCache(int(state_cache_mb * 2**20))
        self.sessions = SessionStore(session_dir, model) if session_dir is not None else None
        self.max_len = _max_stream_len(model)
        self.free = list(range(max_batch))
        self.waiting: deque[Stream] = deque()
        self.prefilling: list[Stream] = []
        self.decoding: list[Stream] = []
        self.lock = threading.RLock()
        self.decode_path = choose_decode_path(model, decode, max_batch)
        self.ticks = self.prefill_tokens = self.decode_tokens = 0

    # ------------------------------------------------------------ requests
    def submit(
        self,
        prompt: str | Sequence[int],
        state: State | None = None,
        keep_state: bool = False,
        session: str | None = None,
        **sampling: object,
    ) -> Stream:
        """Queue a request; ``sampling`` are :class:`Sampling`'s fields. Returns its stream.

        ``state``: start from this batch-1 state (a client's, checked) instead of a fresh
        one. ``keep_state``: when done, ``stream.state`` is the state after every prompt
        and generated token. ``session``: continue the named session of ``session_dir``
        from its stored state (or a fresh one) and store the new state when done. A
        request with a state of its own neither reads nor fills the prefix cache, whose
        prefixes start from the fresh state."""
        settings = Sampling(**sampling)  # type: ignore[arg-type]
        ids = self._encode(prompt)
        start, read_before = None, 0
        if session is not None:
            if self.sessions is None:
                raise ArgumentError("sessions need a session directory (session_dir)")
            if state is not None:
                raise ArgumentError("give a session or a state, not both")
            stored = self.sessions.load(session)
            if stored is not None:
                start, read_before = stored
        elif state is not None:
            start = check_state(state, self.model)
        if self.max_len is not None and len(ids) + settings.max_tokens > self.max_len:
            raise ArgumentError(
                f"the prompt's {len(ids)} tokens and max_tokens {settings.max_tokens} exceed "
                f"the {self.max_len} tokens this model's global attention can hold (max_len)"
            )
        stream = Stream(self, ids, settings, session=session)
        stream.keep_state = keep_state or session is not None
        stream._start, stream.state_tokens = start, read_before
        seed = settings.seed if settings.seed is not None else secrets.randbits(63)
        stream._generator = torch.Generator().manual_seed(seed)
        stream._decoder = self.tokenizer.stream_decoder()
        with self.lock:
            if settings.max_tokens == 0:
                self._finish(stream, "length")
            else:
                self.waiting.append(stream)
        return stream

    def generate_many(
        self, prompts: Sequence[str | Sequence[int]], **sampling: object
    ) -> list[str]:
        """The generated text of every prompt, all run together."""
        streams = [self.submit(p, **sampling) for p in prompts]
        while not all(s.done for s in streams):
            self.step()
        return [s.text for s in streams]

    def cancel(self, stream: Stream) -> None:
        with self.lock:
            if not stream.done:
                self._finish(stream, "cancelled")

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.prefilling or self.decoding)

    # ---------------------------------------------------------------- ticks
    @torch.no_grad()
    def step(self) -> bool:
        """One tick: admit, one prefill chunk, one batched decode step. False when idle."""
        with self.lock:
            if not self.busy:
                return False
            self.ticks += 1
            self._admit()
            if self.prefilling:
                self._prefill(self.prefilling[0])
            if self.decoding:
                self._decode()
            return True

    def _admit(self) -> None:
        while self.waiting and self.free:
            stream = self.waiting.popleft()
            stream._slot = self.free.pop(0)
            if stream._start is not None:
                self._write_slot(stream._slot, stream._start)
                self.prefilling.append(stream)
                continue
            boundaries = self._boundaries(len(stream.prompt))
            hit = self.cache.lookup(stream.prompt, boundaries, len(stream.prompt))
            start = hit.state if hit is not None else self._fresh
            self._write_slot(stream._slot, start)
            if hit is None:
                self.prefilling.append(stream)
                continue
            stream._pos = stream.cached_tokens = hit.length
            if hit.length == len(stream.prompt):
                self._emit(stream, hit.logits)
            else:
                self.prefilling.append(stream)

    def _prefill(self, stream: Stream) -> None:
        end = min(len(stream.prompt), (stream._pos // self.prefill_chunk + 1) * self.prefill_chunk)
        ids = torch.tensor([stream.prompt[stream._pos : end]], device=self.device)
        logits, state = self.model(ids, state=self._read_slot(stream._slot), return_state=True)
        self._write_slot(stream._slot, state)
        self.prefill_tokens += end - stream._pos
        stream._pos = end
        whole = end == len(stream.prompt)
        if stream._start is None:
            self.cache.put(stream.prompt, end, state, logits[0, -1] if whole else None)
        if whole:
            self.prefilling.remove(stream)
            self._emit(stream, logits[0, -1])

    def _decode(self) -> None:
        streams = sorted(self.decoding, key=lambda s: s._slot)
        ids = torch.tensor([s._next for s in streams], device=self.device)
        first, last = streams[0]._slot, streams[-1]._slot
        if self.decode_path.uses_fused(len(streams)) and last - first + 1 == len(streams):
            # consecutive slots (always so for one stream): the fused step updates the
            # pool's rows in place, with no gather and no scatter
            rows = tree_map(lambda t: t[first : last + 1], self.state)
            logits, state = self._step(ids, rows)
            for row, new in zip(tree_leaves(rows), tree_leaves(state)):
                if new is not row:
                    row.copy_(new)
        else:
            slots = torch.tensor([s._slot for s in streams], device=self.device)
            logits, state = self._step(ids, tree_map(lambda t: t[slots], self.state))
            tree_map(lambda pool, new: pool.index_copy_(0, slots, new), self.state, state)
        self.decode_tokens += len(streams)
        for row, stream in enumerate(streams):
            self._emit(stream, logits[row])

    # ------------------------------------------------------------- helpers
    def _emit(self, stream: Stream, logits: torch.Tensor) -> None:
        """Draw the stream's next token from ``logits`` (V,), add its text, and finish the
        stream or queue the token for the next decode step."""
        s = stream.sampling
        token = int(
            sample_next(logits[None], s.temperature, s.top_k, s.top_p, stream._generator)[0]
        )
        stream.tokens.append(token)
        if token < self.tokenizer.vocab_size:
            stream.text += stream._decoder.step(token)
        cut = _first_stop(stream.text, s.stop)
        if cut is not None:
            stream.text = stream.text[:cut]
            self._finish(stream, "stop")
        elif len(stream.tokens) >= s.max_tokens:
            stream.text += stream._decoder.flush()
            cut = _first_stop(stream.text, s.stop)
            stream.text = stream.text if cut is None else stream.text[:cut]
            self._finish(stream, "length" if cut is None else "stop")
        else:
            stream._next = token
            if stream not in self.decoding:
                self.decoding.append(stream)

    def _finish(self, stream: Stream, reason: str) -> None:
        if stream.keep_state and reason != "cancelled" and stream._slot >= 0:
            self._keep_state(stream)
        stream.done, stream.finish_reason = True, reason
        for queue in (self.waiting, self.prefilling, self.decoding):
            if stream in queue:
                queue.remove(stream)
        if stream._slot >= 0:
            self.free.append(stream._slot)
            stream._slot = -1

    def _keep_state(self, stream: Stream) -> None:
        """The stream's state after its last token too (which no step has read yet), kept
        in ``stream.state`` and, for a session, stored."""
        state = self._read_slot(stream._slot)
        if stream.tokens:
            _, state = self._step(torch.tensor([stream.tokens[-1]], device=self.device), state)
        stream.state = state
        stream.state_tokens += len(stream.prompt) + len(stream.tokens)
        if stream.session is not None:
            self.sessions.save(stream.session, state, stream.state_tokens)

    def _step(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One decode step of ``ids`` (B,) from ``state`` (the engine's own copy: the fused
        step may update it in place), on the path chosen for B rows."""
        if self.decode_path.uses_fused(len(ids)):
            return self.decode_path.fused.step(ids, state, in_place=True)
        return self.model.step(ids, state)

    def _boundaries(self, n: int) -> list[int]:
        """Where a prompt of ``n`` tokens stops between prefill chunks, and its end."""
        return [*range(self.prefill_chunk, n, self.prefill_chunk), n]

    def _read_slot(self, slot: int) -> State:
        return tree_map(lambda t: t[slot : slot + 1].clone(), self.state)

    def _write_slot(self, slot: int, state: State) -> None:
        for pool, row in zip(tree_leaves(self.state), tree_leaves(state)):
            pool[slot] = row[0]

    def _encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, Sequence) and all(
            isinstance(i, int) and not isinstance(i, bool) for i in prompt
        ):
            ids = list(prompt)
        else:
            raise ArgumentError("a prompt is a string or a list of token ids")
        if not ids:
            raise ArgumentError("the prompt is empty: give at least one token")
        vocab = self.model.config.vocab_size
        if min(ids) < 0 or max(ids) >= vocab:
            raise ArgumentError(
                f"prompt token ids must be in [0, {vocab}), got {min(ids)}..{max(ids)}"
            )
        return ids


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop string starts in ``text`` (None: none occurs)."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _max_stream_len(model: LanguageModel) -> int | None:
    """The most tokens one stream may read: global attention's max_len, else no limit."""
    from statewise.layers.attention import Attention

    caps = [m.max_len for m in model.modules() if isinstance(m, Attention) and not m.window]
    return min(caps) if caps else None
