"""Bad requests get a 4xx with OpenAI's error body and do not disturb a running stream;
/metrics counts what happened; a client that leaves mid-stream frees its slot."""

from __future__ import annotations

import http.client
import json
import threading
import time
from urllib.parse import urlsplit

import pytest

from statewise.serve import engine_from_checkpoint
from tests.serve.conftest import running_server
from tests.serve.http import events, metrics, open_stream, request

GOOD = {"model": "tiny-chat", "prompt": "To be", "max_tokens": 5}
CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]}
WIZARD = [{"role": "wizard", "content": "x"}]
IMAGE = [{"role": "user", "content": [{"type": "image_url"}]}]
NAN = b'{"prompt": "a", "temperature": NaN}'

# (what is wrong, path, body or raw bytes, status, error.param)
BAD = [
    ("unknown model", "/v1/completions", {**GOOD, "model": "gpt-4"}, 404, "model"),
    ("temperature NaN", "/v1/completions", NAN, 400, "temperature"),
    ("top_p inf", "/v1/completions", b'{"prompt": "a", "top_p": Infinity}', 400, "top_p"),
    ("temperature > 2", "/v1/completions", {**GOOD, "temperature": 2.5}, 400, "temperature"),
    ("negative temperature", "/v1/completions", {**GOOD, "temperature": -0.1}, 400, "temperature"),
    ("top_p 0", "/v1/completions", {**GOOD, "top_p": 0}, 400, "top_p"),
    ("top_k 0", "/v1/completions", {**GOOD, "top_k": 0}, 400, "top_k"),
    ("n 2", "/v1/completions", {**GOOD, "n": 2}, 400, "n"),
    ("max_tokens 0", "/v1/completions", {**GOOD, "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens too many", "/v1/completions", {**GOOD, "max_tokens": 10**9}, 400, "max_tokens"),
    ("negative seed", "/v1/completions", {**GOOD, "seed": -1}, 400, "seed"),
    ("temperature a string", "/v1/completions", {**GOOD, "temperature": "hot"}, 400, "temperature"),
    ("max_tokens a float", "/v1/completions", {**GOOD, "max_tokens": 5.5}, 400, "max_tokens"),
    ("stream a string", "/v1/completions", {**GOOD, "stream": "yes"}, 400, "stream"),
    ("five stops", "/v1/completions", {**GOOD, "stop": list("abcde")}, 400, "stop"),
    ("empty stop", "/v1/completions", {**GOOD, "stop": ""}, 400, "stop"),
    ("no prompt", "/v1/completions", {"model": "tiny-chat"}, 400, "prompt"),
    ("empty prompt", "/v1/completions", {**GOOD, "prompt": ""}, 400, "prompt"),
    ("two prompts", "/v1/completions", {**GOOD, "prompt": ["a", "b"]}, 400, "prompt"),
    ("token id past vocab", "/v1/completions", {**GOOD, "prompt": [1, 10**6]}, 400, "prompt"),
    ("prompt too long", "/v1/completions", {**GOOD, "prompt": "x" * 65}, 400, "prompt"),
    ("logprobs", "/v1/completions", {**GOOD, "logprobs": 3}, 400, "logprobs"),
    ("malformed JSON", "/v1/completions", b'{"prompt": "a", ', 400, None),
    ("JSON not an object", "/v1/completions", b"[1, 2]", 400, None),
    ("unknown role", "/v1/chat/completions", {**CHAT, "messages": WIZARD}, 400, "messages"),
    ("no messages", "/v1/chat/completions", {**CHAT, "messages": []}, 400, "messages"),
    ("image part", "/v1/chat/completions", {**CHAT, "messages": IMAGE}, 400, "messages"),
]  # fmt: skip


@pytest.fixture(scope="module")
def running(checkpoint_dir):
    engine = engine_from_checkpoint(checkpoint_dir, max_batch=2)
    config = dict(max_prompt_tokens=64, max_tokens_limit=5000, disconnect_poll_s=0.02)
    with running_server(engine, **config) as server:
        yield server


@pytest.mark.parametrize("what, path, body, status, param", BAD, ids=[b[0] for b in BAD])
def test_a_bad_request_gets_an_openai_error(running, what, path, body, status, param):
    raw = body if isinstance(body, bytes) else None
    got, reply = request(running.url, "POST", path, None if raw else body, raw)
    assert got == status, reply
    error = reply["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert isinstance(error["message"], str) and error["message"]


def test_specific_error_messages(running):
    _, reply = request(running.url, "POST", "/v1/completions", {**GOOD, "prompt": "x" * 65})
    assert reply["error"]["code"] == "context_length_exceeded"
    assert "65 tokens" in reply["error"]["message"]
    _, reply = request(running.url, "POST", "/v1/completions", raw=b'{"prompt": ')
    assert "not valid JSON" in reply["error"]["message"]
    _, reply = request(running.url, "POST", "/v1/completions", {**GOOD, "model": "gpt-4"})
    assert reply["error"]["code"] == "model_not_found"
    status, reply = request(running.url, "GET", "/v1/nothing")
    assert status == 404 and "error" in reply


def test_bad_requests_do_not_disturb_a_running_stream(running):
    body = {"prompt": "O Romeo", "max_tokens": 400, "temperature": 0.7, "seed": 11}
    alone = request(running.url, "POST", "/v1/completions", body)[1]["choices"][0]["text"]
    conn, response = open_stream(running.url, body)
    try:
        for _, path, bad, status, _ in BAD:
            raw = bad if isinstance(bad, bytes) else None
            assert request(running.url, "POST", path, None if raw else bad, raw)[0] == status
        streamed = events(response)
    finally:
        conn.close()
    assert streamed[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in streamed[:-1]) == alone
    assert streamed[-2]["choices"][0]["finish_reason"] == "length"


def test_metrics_count_requests_tokens_and_cache_hits(running):
    before = metrics(running.url)
    body = {"prompt": "Speak, speak", "max_tokens": 7, "temperature": 0}
    for _ in range(2):  # the second one hits the prefix cache
        assert request(running.url, "POST", "/v1/completions", body)[0] == 200
    assert request(running.url, "POST", "/v1/completions", {**body, "top_k": 0})[0] == 400
    after = metrics(running.url)

    def grew(key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert grew('statewise_requests_total{endpoint="/v1/completions",status="200"}') == 2
    assert grew('statewise_requests_total{endpoint="/v1/completions",status="400"}') == 1
    assert grew("statewise_prompt_tokens_total") == 2 * len("Speak, speak")
    assert grew("statewise_generated_tokens_total") == 14
    assert grew('statewise_requests_finished_total{reason="length"}') == 2
    assert grew("statewise_cache_hits_total") == 1 and grew("statewise_cache_misses_total") == 1
    assert grew("statewise_prefill_tokens_total") == len("Speak, speak")  # the hit skipped it
    assert grew("statewise_decode_tokens_total") == 12  # 6 steps each after the first token
    assert after["statewise_batch_slots"] == 2
    assert after["statewise_requests_running"] == 0 and after["statewise_batch_occupancy"] == 0
    slot = after["statewise_slot_state_bytes"]
    assert slot > 0 and after["statewise_state_bytes"] == after["statewise_cache_bytes"]


def test_a_client_leaving_mid_stream_frees_its_slot(running):
    before = metrics(running.url)
    seen = {}

    def watch() -> None:  # the slot is held while the stream runs
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "running" not in seen:
            if metrics(running.url)["statewise_requests_running"] == 1:
                seen["running"] = running.state.runner.slot_state_bytes
            time.sleep(0.005)

    conn, response = open_stream(running.url, {"prompt": "To be", "max_tokens": 5000})
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        first = response.read(30)  # the first event arrived: the stream runs
        assert first.startswith(b'data: {"id":"cmpl-')
        watcher.join(10)
    finally:
        conn.sock.close()  # leave without reading the rest
        conn.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = metrics(running.url)
        if now.get('statewise_requests_finished_total{reason="cancelled"}', 0) > before.get(
            'statewise_requests_finished_total{reason="cancelled"}', 0
        ):
            break
        time.sleep(0.02)
    assert "running" in seen
    assert now.get('statewise_requests_finished_total{reason="cancelled"}', 0) == 1 + before.get(
        'statewise_requests_finished_total{reason="cancelled"}', 0
    )
    assert now["statewise_requests_running"] == 0
    assert len(running.engine.free) == running.engine.max_batch
    assert (
        now["statewise_generated_tokens_total"] - before["statewise_generated_tokens_total"] < 5000
    )
    assert running.state.in_flight == 0


def cancelled(url: str) -> float:
    return metrics(url).get('statewise_requests_finished_total{reason="cancelled"}', 0)


def test_a_client_leaving_a_non_streaming_request_frees_its_slot(running):
    before, generated = cancelled(running.url), running.state.runner.generated_tokens
    parts = urlsplit(running.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    body = json.dumps({"prompt": "To be", "max_tokens": 5000}).encode()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    deadline = time.monotonic() + 5
    while running.state.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert running.state.in_flight == 1
    conn.sock.close()  # leave before the answer
    conn.close()
    while cancelled(running.url) == before and time.monotonic() < deadline + 5:
        time.sleep(0.02)
    assert cancelled(running.url) == before + 1
    assert running.state.runner.generated_tokens - generated < 5000
    assert len(running.engine.free) == running.engine.max_batch
    assert running.state.in_flight == 0
