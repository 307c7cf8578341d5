"""``statewise serve`` as a process: SIGTERM while streaming drains and exits 0; without
the extra, one line naming it and exit 2."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from statewise.cli import main
from tests.conftest import ROOT
from tests.serve.http import events, open_stream, request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_drains_streams_answers_503_and_exits_0(checkpoint_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # grace 5 s: the short stream's 200 tokens fit in it on a loaded 2-core machine (at 1 s
    # it was cut off once), the long one's 100000 do not
    argv = ["--checkpoint", str(checkpoint_dir), "--port", str(port), "--grace-s", "5"]
    argv += ["--max-tokens-limit", "100000", "--model-name", "bard"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "statewise", "serve", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                if request(url, "GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        # a stream too long for the grace period, and a short one that fits in it; both
        # are admitted (their 200 headers are read) before SIGTERM, with no sleep to race
        results: dict[str, list] = {}

        def read(name: str, conn: object, response: object) -> None:
            try:
                results[name] = events(response)
            finally:
                conn.close()

        readers = []
        for name, max_tokens in (("long", 100000), ("short", 200)):
            conn, response = open_stream(url, {"prompt": "To be", "max_tokens": max_tokens})
            readers.append(threading.Thread(target=read, args=(name, conn, response)))
            readers[-1].start()
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10  # the signal is handled, whatever the machine's load
        while request(url, "GET", "/health")[0] != 503:
            assert time.monotonic() < deadline, "SIGTERM did not start draining"
            time.sleep(0.05)
        status, reply = request(url, "POST", "/v1/completions", {"prompt": "a", "max_tokens": 2})
        assert status == 503 and reply["error"]["code"] == "shutting_down"
        assert proc.wait(20) == 0, proc.stderr.read().decode()
        for reader in readers:
            reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
    for name, reason in (("short", "length"), ("long", "cancelled")):
        got = results[name]
        assert got[-1] == "[DONE]", name
        assert got[-2]["choices"][0]["finish_reason"] == reason, name
        assert got[-2]["model"] == "bard"
    assert len("".join(e["choices"][0]["text"] for e in results["long"][:-1])) < 100000


def test_serve_without_the_extra_names_it_and_exits_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi raises ImportError
    assert main(["serve", "--checkpoint", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'statewise[serve]'" in err[0]


def test_serve_with_a_missing_checkpoint_exits_2_with_one_line(capsys, tmp_path):
    assert main(["serve", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
