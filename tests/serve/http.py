"""Raw HTTP to a test server (the standard library only), with timeouts."""

from __future__ import annotations

import http.client
import json
import re
from urllib.parse import urlsplit


def request(
    url: str, method: str, path: str, body: object = None, raw: bytes | None = None
) -> tuple[int, dict]:
    """Status and JSON body (or {"text": ...}) of one request; ``raw`` is sent as is."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        text = response.read().decode()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, {"text": text}
    finally:
        conn.close()


def metrics(url: str) -> dict[str, float]:
    """/metrics as {"name{labels}": value}."""
    status, body = request(url, "GET", "/metrics")
    assert status == 200
    values = {}
    for line in body["text"].splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values


def open_stream(url: str, body: dict) -> tuple[http.client.HTTPConnection, object]:
    """A streaming POST /v1/completions whose events are read from the response."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request(
        "POST",
        "/v1/completions",
        body=json.dumps({**body, "stream": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    response = conn.getresponse()
    assert response.status == 200, response.read()
    return conn, response


def events(response: object) -> list[dict | str]:
    """Every SSE ``data:`` payload of a response, JSON decoded except ``[DONE]``."""
    text = response.read().decode()
    out: list[dict | str] = []
    for payload in re.findall(r"^data: (.*)$", text, flags=re.M):
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out
