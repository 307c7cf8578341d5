"""The server's own limits: a request body over --max-body-mb gets 413 (with or without a
Content-Length), and a request that finds --max-waiting requests already waiting for a
slot gets 429; both with OpenAI's error body, and neither disturbs the streams running."""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit

import pytest

from statewise.serve import engine_from_checkpoint
from tests.serve.conftest import running_server
from tests.serve.http import events, metrics, open_stream, request

MAX_BODY = 4000


@pytest.fixture(scope="module")
def running(checkpoint_dir):
    engine = engine_from_checkpoint(checkpoint_dir, max_batch=1)
    with running_server(engine, max_waiting=1, max_body_bytes=MAX_BODY) as server:
        yield server


def chunked(url: str, data: bytes) -> tuple[int, dict]:
    """POST /v1/completions with a chunked body (no Content-Length)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        pieces = (data[i : i + 1000] for i in range(0, len(data), 1000))
        conn.request(
            "POST",
            "/v1/completions",
            body=pieces,
            headers={"Content-Type": "application/json"},
            encode_chunked=True,
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read().decode())
    finally:
        conn.close()


def body_of(size: int) -> bytes:
    """A valid completion request of about ``size`` bytes (padded with an ignored field)."""
    base = {"prompt": "To be", "max_tokens": 3, "temperature": 0}
    return json.dumps({**base, "padding": "x" * max(0, size - 80)}).encode()


def test_a_body_over_the_limit_gets_413(running):
    status, reply = request(running.url, "POST", "/v1/completions", raw=body_of(MAX_BODY + 500))
    assert status == 413 and reply["error"]["code"] == "request_too_large"
    assert str(MAX_BODY) in reply["error"]["message"]
    status, reply = chunked(running.url, body_of(MAX_BODY + 500))
    assert status == 413 and reply["error"]["code"] == "request_too_large"


def test_a_body_under_the_limit_is_read_whole(running):
    status, reply = request(running.url, "POST", "/v1/completions", raw=body_of(MAX_BODY - 200))
    assert status == 200, reply
    status, chunked_reply = chunked(running.url, body_of(MAX_BODY - 200))  # replayed in full
    assert status == 200 and chunked_reply["choices"][0]["text"] == reply["choices"][0]["text"]


def test_a_full_queue_gets_429_and_the_running_streams_finish(running):
    body = {"prompt": "O Romeo", "max_tokens": 300, "temperature": 0}
    first, first_response = open_stream(running.url, body)  # holds the only slot
    second, second_response = open_stream(running.url, {**body, "max_tokens": 3})
    try:
        deadline = time.monotonic() + 10  # the second waits for the slot
        while metrics(running.url)["statewise_requests_waiting"] < 1:
            assert time.monotonic() < deadline, "the second request never queued"
            time.sleep(0.01)
        status, reply = request(running.url, "POST", "/v1/completions", {**body, "max_tokens": 3})
        assert status == 429 and reply["error"]["code"] == "server_busy"
        assert "--max-waiting 1" in reply["error"]["message"]
        done = [events(first_response), events(second_response)]
    finally:
        first.close()
        second.close()
    assert all(d[-1] == "[DONE]" for d in done)
    assert done[0][-2]["choices"][0]["finish_reason"] == "length"
    assert (
        metrics(running.url)['statewise_requests_total{endpoint="/v1/completions",status="429"}']
        == 1
    )
