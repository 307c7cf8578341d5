"""A tiny char_lm checkpoint trained once, and servers on free loopback ports."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")

from statewise.infer.engine import Engine  # noqa: E402
from statewise.serve import ServeConfig, Server, bound_port, create_app, make_server  # noqa: E402
from statewise.train.config import load_config  # noqa: E402
from statewise.train.trainer import train  # noqa: E402
from tests.conftest import SHARED_DATA, TINY_CHAR  # noqa: E402


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A char_lm run directory (mingru, d_model 16, 20 steps) named ``tiny-chat``."""
    root = tmp_path_factory.mktemp("serve")
    source = SHARED_DATA / "tinyshakespeare.txt"
    text = source.read_text()[:20_000] if source.exists() else "To be, or not to be. " * 1000
    (root / "text.txt").write_text(text)
    config = root / "tiny.toml"
    config.write_text(
        TINY_CHAR.format(layer="mingru", path=root / "text.txt", steps=20, checkpoint_every=20)
    )
    out = root / "tiny-chat"
    train(load_config(config), out, progress=False)
    return out


@pytest.fixture(scope="module", autouse=True)
def no_threads_left() -> Iterator[None]:
    """Every server thread a module started (uvicorn, the engine runner, the drainer) is
    gone once its servers are stopped."""
    yield
    names = ("test-uvicorn", "statewise-engine", "statewise-drain")
    deadline = time.monotonic() + 5
    while any(t.name in names for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate() if t.name in names]


@dataclass
class Running:
    """A server started by :func:`running_server`."""

    server: Server
    engine: Engine
    url: str  # http://127.0.0.1:PORT

    @property
    def state(self):  # the app's ServerState
        return self.server.serve_state


@contextlib.contextmanager
def running_server(engine: Engine, **config: object) -> Iterator[Running]:
    """Serve ``engine`` from a thread on a free 127.0.0.1 port; stopped and joined on exit
    (the engine's runner thread too)."""
    config.setdefault("model_name", "tiny-chat")
    app = create_app(engine, ServeConfig(**config))
    server = make_server(app, "127.0.0.1", 0, log_level="warning", log_config=None)
    thread = threading.Thread(target=server.run, name="test-uvicorn")
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(10)
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield Running(server, engine, f"http://127.0.0.1:{bound_port(server)}")
    finally:
        server.should_exit = True
        thread.join(15)
        server.join_drainer()
        assert not thread.is_alive(), "the test server did not stop"
