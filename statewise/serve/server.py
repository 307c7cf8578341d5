"""Running the app under uvicorn, with statewise's shutdown: on SIGTERM (or Ctrl-C) the
server stops admitting (503 for new requests), lets the requests in flight finish for up
to ``grace_s`` seconds, cancels those still running (their streams end with
finish_reason "cancelled" and ``data: [DONE]``), and returns normally, so that
``statewise serve`` exits 0. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from statewise.serve.app import ServerState


class Server(uvicorn.Server):
    """uvicorn's server with the draining shutdown of the module doc."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.serve_state: ServerState = app.state.serve
        self._drainer: threading.Thread | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not uvicorn's: it would close the socket at once (no 503s) and re-raise the
        # signal after the shutdown, turning a clean stop into exit 143.
        if self._drainer is not None:
            if sig == signal.SIGINT:
                self.force_exit = self.should_exit = True
            return
        self.begin_shutdown()

    def begin_shutdown(self) -> None:
        """Start draining (from a signal handler, or a test); returns at once."""
        if self._drainer is None:
            self._drainer = threading.Thread(target=self._drain, name="statewise-drain")
            self._drainer.start()

    def _drain(self) -> None:
        state = self.serve_state
        state.draining = True
        deadline = time.monotonic() + state.config.grace_s
        while state.in_flight > 0 and time.monotonic() < deadline and not self.should_exit:
            time.sleep(0.05)
        if state.in_flight > 0:
            state.runner.cancel_all()
            until = time.monotonic() + 5.0  # the cancelled streams send their last event
            while state.in_flight > 0 and time.monotonic() < until and not self.should_exit:
                time.sleep(0.05)
        self.should_exit = True

    def join_drainer(self, timeout_s: float = 30.0) -> None:
        """Wait for the draining thread, if one was started."""
        if self._drainer is not None:
            self._drainer.join(timeout_s)


def make_server(
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    log_config: dict | None = uvicorn.config.LOGGING_CONFIG,
) -> Server:
    """A :class:`Server` for ``app`` on ``host:port`` (port 0: a free one, see
    :func:`bound_port`)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        log_config=log_config,
        access_log=False,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
    return Server(config, app)


def bound_port(server: Server) -> int:
    """The port a started server listens on."""
    return server.servers[0].sockets[0].getsockname()[1]
