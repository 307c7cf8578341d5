"""The OpenAI-compatible HTTP API over the batching engine (FastAPI).

    POST /v1/completions        text completion, streaming (server-sent events) or not
    POST /v1/chat/completions   chat, through the plain template of statewise.serve.chat
    GET  /v1/models             the one model served
    GET  /health                {"status": "ok"} (503 {"status": "draining"} after SIGTERM)
    GET  /metrics               Prometheus text (statewise.serve.metrics)
    GET  /                      the playground page (statewise/serve/static)

A request is checked in full before it reaches the engine; a bad one gets a 4xx with an
OpenAI-style body ``{"error": {"message", "type", "param", "code"}}`` and touches no other
request. The engine is driven by one background thread (statewise.serve.runner); handlers
only wait for their stream's snapshots.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from statewise.errors import ArgumentError, InputError
from statewise.infer.engine import Engine
from statewise.infer.state_io import decode_state_b64, encode_state_b64, model_fingerprint
from statewise.serve.chat import CHAT_STOP, render_chat
from statewise.serve.metrics import CONTENT_TYPE, render_metrics
from statewise.serve.runner import Job, Runner

MAX_STOPS = 4  # OpenAI's limit on stop strings per request
MAX_SEED = 2**63
TEMPERATURE_MAX = 2.0  # OpenAI's range is [0, 2]
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
CHAT_MAX_TOKENS = 256  # the default for chat, whose OpenAI default is "up to the context"

# Fields of OpenAI's API that statewise does not implement: accepted only at the value
# that means "off", so that a client asking for them learns it at once.
UNSUPPORTED = {
    "echo": (False,),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "functions": (None, []),
    "response_format": (None, {"type": "text"}),
}


@dataclass
class ServeConfig:
    """What the server allows: the model id it answers to, the longest prompt in tokens,
    the largest max_tokens, the grace period after SIGTERM, how often a non-streaming
    request checks that its client is still there, how many requests may wait for a state
    slot (more get 429), and the largest request body in bytes (a larger one gets 413;
    the default leaves room for client-held states, a few MiB each in base64)."""

    model_name: str
    max_prompt_tokens: int = 4096
    max_tokens_limit: int = 4096
    grace_s: float = 10.0
    disconnect_poll_s: float = 0.5
    max_waiting: int = 1024
    max_body_bytes: int = 64 * 2**20


@dataclass
class ServerState:
    """What the handlers share: the engine, its runner, request counts by (endpoint,
    status), requests in flight, and whether the server is draining (after SIGTERM)."""

    engine: Engine
    runner: Runner
    config: ServeConfig
    requests: dict[tuple[str, int], int] = field(default_factory=dict)
    in_flight: int = 0
    draining: bool = False
    started: float = field(default_factory=time.time)
    fingerprint: str = ""  # of the served model: client states must carry it

    def count(self, endpoint: str, status: int) -> None:
        self.requests[endpoint, status] = self.requests.get((endpoint, status), 0) + 1


class APIError(Exception):
    """An error answered with OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status,
            message,
            param,
            code,
            kind,
        )

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 before any handler reads
    it: at once when its Content-Length says so, else (a chunked body) as soon as the
    bytes received pass the limit; the body read so far is replayed to the app."""

    def __init__(self, app: Any, max_bytes: int, state: ServerState) -> None:
        self.app, self.max_bytes, self.state = app, max_bytes, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(scope, send)
            return
        if length is not None or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, send)
                return
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay() -> Any:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        path = scope["path"]
        self.state.count(path, 413)
        err = APIError(
            413,
            f"the request body is over this server's limit of {self.max_bytes} bytes "
            "(--max-body-mb)",
            code="request_too_large",
        )
        await err.response()(scope, _no_body, send)


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


# ----------------------------------------------------------------- request bodies
class _Body(BaseModel):
    """The fields both endpoints take. Strict types (a string is not a number), finite
    numbers only; fields not listed here are ignored unless UNSUPPORTED names them."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # a statewise extension
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    # statewise extensions: continue a named session (--session-dir), start from a state
    # the client holds (base64 safetensors), and ask for the final state back
    session: str | None = None
    state: str | None = None
    return_state: bool | None = None


class CompletionBody(_Body):
    prompt: str | list[str] | list[int] | list[list[int]]


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatBody(_Body):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None


# -------------------------------------------------------------------- the app
def create_app(engine: Engine, config: ServeConfig) -> FastAPI:
    """The FastAPI app serving ``engine`` under ``config``. Its lifespan starts and stops
    the runner thread; ``app.state.serve`` is the :class:`ServerState`."""
    runner = Runner(engine)
    state = ServerState(engine, runner, config, fingerprint=model_fingerprint(engine.model))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import asyncio

        runner.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            runner.stop()

    app = FastAPI(title="statewise", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.serve = state
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, state=state)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        state.count(request.url.path, err.status)
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return await _api_error(request, _validation_error(err))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if err.status_code < 500 else "server_error"
        message = f"{request.method} {request.url.path}: {err.detail}"
        return await _api_error(request, APIError(err.status_code, message, kind=kind))

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(_static_file("playground.html"), headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC_TYPES:
            raise APIError(404, f"GET /static/{name}: Not Found")
        return Response(_static_file(name), media_type=STATIC_TYPES[name], headers=PAGE_HEADERS)

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ok", "model": config.model_name})

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        text = render_metrics(engine, runner, state.requests, state.draining)
        return PlainTextResponse(text, media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        state.count("/v1/models", 200)
        card = {
            "id": config.model_name,
            "object": "model",
            "created": int(state.started),
            "owned_by": "statewise",
        }
        return JSONResponse({"object": "list", "data": [card]})

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request) -> Any:
        ids = _prompt_ids(engine, body.prompt)
        return await _generate(state, request, body, ids, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody, request: Request) -> Any:
        if body.max_completion_tokens is not None:
            if body.max_tokens is not None and body.max_tokens != body.max_completion_tokens:
                raise APIError(
                    400, "give max_tokens or max_completion_tokens, not two different values"
                )
            body.max_tokens = body.max_completion_tokens
        messages = [m.model_dump() for m in body.messages]
        try:
            prompt = render_chat(messages)
        except ArgumentError as err:
            raise APIError(400, str(err), param="messages") from None
        return await _generate(state, request, body, engine.tokenizer.encode(prompt), chat=True)

    return app


# ---------------------------------------------------------------- generation
async def _generate(
    state: ServerState, request: Request, body: _Body, ids: list[int], chat: bool
) -> Any:
    """Check ``body``, submit ``ids``, and answer with the whole completion or its SSE
    stream."""
    endpoint = request.url.path
    if state.draining:
        raise APIError(
            503, "the server is shutting down", code="shutting_down", kind="server_error"
        )
    waiting = len(state.engine.waiting) + state.runner.queued
    if waiting >= state.config.max_waiting:
        raise APIError(
            429,
            f"the server is busy: {waiting} requests are waiting for a slot (--max-waiting "
            f"{state.config.max_waiting}); retry later",
            code="server_busy",
            kind="server_error",
        )
    sampling = {**_sampling(state.config, body, chat), **_state_options(state, body)}
    limit = state.config.max_prompt_tokens
    if len(ids) > limit:
        raise APIError(
            400,
            f"the prompt has {len(ids)} tokens, more than this server's --max-prompt-tokens "
            f"{limit}",
            param="messages" if chat else "prompt",
            code="context_length_exceeded",
        )
    include_usage = bool((body.stream_options or {}).get("include_usage"))
    try:
        job = await state.runner.submit(ids, sampling)
    except InputError as err:  # a bad session name, a session of another model, ...
        raise APIError(400, " ".join(str(err).splitlines())) from None
    state.in_flight += 1
    state.count(endpoint, 200)
    model = state.config.model_name
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    returned = _returned_state(state, job) if body.return_state else None
    if body.stream:
        events = _events(job, rid, created, model, chat, include_usage, returned)
        return _SSEResponse(events, state, job)
    try:
        snap = await job.wait_done(request.is_disconnected, state.config.disconnect_poll_s)
    finally:
        _release(state, job)
    if chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": snap.text},
            "logprobs": None,
            "finish_reason": snap.finish_reason,
        }
    else:
        choice = {
            "index": 0,
            "text": snap.text,
            "logprobs": None,
            "finish_reason": snap.finish_reason,
        }
    return JSONResponse(
        {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": _usage(job),
            **(returned() if returned is not None else {}),
        }
    )


async def _events(
    job: Job,
    rid: str,
    created: int,
    model: str,
    chat: bool,
    include_usage: bool,
    returned: Callable[[], dict[str, Any]] | None = None,
) -> AsyncIterator[str]:
    """The server-sent events of one streamed completion, in OpenAI's chunk shapes."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {"id": rid, "object": kind, "created": created, "model": model, "choices": choices}
        return f"data: {json.dumps({**body, **extra}, separators=(',', ':'))}\n\n"

    def choice(text: str | None, finish: str | None) -> dict[str, Any]:
        if chat:
            delta = {} if text is None else {"content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

    if chat:
        yield chunk([{**choice("", None), "delta": {"role": "assistant", "content": ""}}])
    async for piece in job.pieces():
        yield chunk([choice(piece, None)])
    extra = returned() if returned is not None else {}
    yield chunk([choice(None, job.snapshot.finish_reason)], **extra)
    if include_usage:
        yield chunk([], usage=_usage(job))
    yield "data: [DONE]\n\n"


class _SSEResponse(StreamingResponse):
    """A streamed completion that, however it ends (finished, the client gone, the server
    stopping), cancels its request if still running and stops counting it in flight."""

    def __init__(self, events: AsyncIterator[str], state: ServerState, job: Job) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._state, self._job = state, job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            _release(self._state, self._job)


def _release(state: ServerState, job: Job) -> None:
    """Once per job: cancel its stream unless it finished, and drop it from in flight."""
    if getattr(job, "_released", False):
        return
    job._released = True  # type: ignore[attr-defined]
    if not job.snapshot.done:
        state.runner.cancel(job)
    state.in_flight -= 1


def _state_options(state: ServerState, body: _Body) -> dict[str, object]:
    """The engine's session/state arguments from the statewise extensions of ``body``."""
    options: dict[str, object] = {}
    if body.session is not None:
        if state.engine.sessions is None:
            raise APIError(
                400, "this server keeps no sessions (start it with --session-dir)", "session"
            )
        options["session"] = body.session
    if body.state is not None:
        if body.session is not None:
            raise APIError(400, "give a session or a state, not both", param="state")
        try:
            options["state"], _ = decode_state_b64(
                body.state, state.engine.model, fingerprint=state.fingerprint
            )
        except InputError as err:
            raise APIError(400, " ".join(str(err).splitlines()), param="state") from None
    if body.return_state:
        options["keep_state"] = True
    return options


def _returned_state(state: ServerState, job: Job) -> Callable[[], dict[str, Any]]:
    """Once the job is done: its final state as base64 safetensors, and the tokens read
    (a cancelled request has none)."""

    def fields() -> dict[str, Any]:
        stream = job.stream
        if stream is None or stream.state is None:
            return {"state": None, "state_tokens": None}
        text = encode_state_b64(
            stream.state,
            state.engine.model,
            tokens=stream.state_tokens,
            fingerprint=state.fingerprint,
        )
        return {"state": text, "state_tokens": stream.state_tokens}

    return fields


def _usage(job: Job) -> dict[str, int]:
    done = job.snapshot.completion_tokens
    return {
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": done,
        "total_tokens": job.prompt_tokens + done,
    }


# ---------------------------------------------------------------- checking
def _sampling(config: ServeConfig, body: _Body, chat: bool) -> dict[str, object]:
    """The engine's sampling arguments from ``body``, or an APIError naming the field."""
    if body.model is not None and body.model != config.model_name:
        raise APIError(
            404,
            f"the model {body.model!r} does not exist; this server serves {config.model_name!r}",
            param="model",
            code="model_not_found",
        )
    for name, allowed in UNSUPPORTED.items():
        if (body.model_extra or {}).get(name) not in (None, *allowed):
            raise APIError(400, f"{name} is not supported by statewise", param=name)
    if body.n not in (None, 1):
        raise APIError(400, f"n must be 1 (one choice per request), got {body.n}", param="n")
    max_tokens = body.max_tokens
    if max_tokens is None:
        max_tokens = CHAT_MAX_TOKENS if chat else COMPLETION_MAX_TOKENS
    if not 1 <= max_tokens <= config.max_tokens_limit:
        raise APIError(
            400,
            f"max_tokens must be in [1, {config.max_tokens_limit}], got {max_tokens}",
            param="max_tokens",
        )
    temperature = 1.0 if body.temperature is None else body.temperature
    if not 0.0 <= temperature <= TEMPERATURE_MAX:
        raise APIError(
            400, f"temperature must be in [0, 2], got {temperature}", param="temperature"
        )
    if body.top_p is not None and not 0.0 < body.top_p <= 1.0:
        raise APIError(400, f"top_p must be in (0, 1], got {body.top_p}", param="top_p")
    if body.top_k is not None and body.top_k < 1:
        raise APIError(400, f"top_k must be >= 1, got {body.top_k}", param="top_k")
    if body.seed is not None and not 0 <= body.seed < MAX_SEED:
        raise APIError(400, f"seed must be in [0, 2**63), got {body.seed}", param="seed")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > MAX_STOPS or not all(stops):
        raise APIError(
            400, f"stop takes at most {MAX_STOPS} non-empty strings, got {stops!r}", param="stop"
        )
    if chat and CHAT_STOP not in stops:
        stops.append(CHAT_STOP)
    return {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_k": body.top_k,
        "top_p": body.top_p,
        "seed": body.seed,
        "stop": tuple(stops),
    }


def _prompt_ids(engine: Engine, prompt: object) -> list[int]:
    """The token ids of a completion's prompt: a string, one string in a list, a list of
    ids, or one such list in a list (one prompt per request)."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise APIError(400, f"one prompt per request, got {len(prompt)}", param="prompt")
        prompt = prompt[0]
    ids = engine.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    if not ids:
        raise APIError(400, "the prompt is empty: give at least one token", param="prompt")
    vocab = engine.model.config.vocab_size
    if min(ids) < 0 or max(ids) >= vocab:
        raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
    return ids


def _validation_error(err: RequestValidationError) -> APIError:
    """The first problem pydantic found, as an OpenAI-style 400."""
    problems = err.errors()
    first = problems[0] if problems else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "")
        return APIError(400, f"the request body is not valid JSON: {reason}".rstrip(": "))
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    # a union's member names ("str", "list[int]") are noise to a user: keep field and index
    path = [p for p in loc if not any(c in p for c in "[]") and p not in ("str", "int")]
    param = ".".join(path) or None
    message = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        message = "this field is required"
    value = first.get("input")
    shown = "" if first.get("type") == "missing" else f" (got {_short(value)})"
    return APIError(400, f"{param or 'body'}: {message}{shown}", param=param)


def _short(value: object) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------- the playground
# The page's files (statewise/serve/static) and their types. Its Content-Security-Policy
# lets it load and call nothing but this server.
STATIC_TYPES = {
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
}


def _static_file(name: str) -> bytes:
    from importlib import resources

    return (resources.files("statewise.serve") / "static" / name).read_bytes()
