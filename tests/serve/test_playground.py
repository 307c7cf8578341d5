"""The playground page at ``/``: served with only local files, and, in a real headless
Chromium (Debian's, driven by playwright), a prompt typed and sent streams the text the
HTTP API gives, the panel shows the model id and the server's cache hits, chat keeps its
history, errors are shown, and Stop ends a long stream and frees its slot."""

from __future__ import annotations

import json
import os
import shutil
import time
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest

from statewise.serve import engine_from_checkpoint
from tests.serve.conftest import running_server
from tests.serve.http import metrics, request

LIMIT = 100_000  # the server's --max-tokens-limit here: a stream long enough to stop
CANCELLED = 'statewise_requests_finished_total{reason="cancelled"}'


@pytest.fixture(scope="module")
def served(checkpoint_dir):
    engine = engine_from_checkpoint(checkpoint_dir, max_batch=2)
    with running_server(engine, max_tokens_limit=LIMIT, disconnect_poll_s=0.02) as running:
        yield running


# ------------------------------------------------------------------ without a browser
class _References(HTMLParser):
    """Every src and href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.urls.append((tag, value))


def _get(url: str, path: str) -> tuple[int, dict[str, str], str]:
    import http.client

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, response.read().decode()
    finally:
        conn.close()


def test_the_page_is_served_at_root_and_loads_only_local_files(served):
    status, headers, html = _get(served.url, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    # the browser itself refuses anything from another origin
    assert "default-src 'self'" in headers["content-security-policy"]
    parser = _References()
    parser.feed(html)
    local = {url for _, url in parser.urls if url != "data:,"}  # data:, is the empty favicon
    assert local == {"/static/playground.js", "/static/playground.css"}
    types = {"js": "text/javascript", "css": "text/css"}
    for path in sorted(local):
        status, headers, text = _get(served.url, path)
        assert status == 200, path
        assert headers["content-type"].split(";")[0] == types[path.rsplit(".", 1)[1]]
        assert "://" not in text, f"{path} names an absolute URL"
    assert "://" not in html
    # the page's ids the browser tests rely on are there
    for needed in ('id="prompt"', 'id="send"', 'id="stop"', 'id="model-id"', 'id="cache-hits"'):
        assert needed in html
    for path in ("/static/app.py", "/static/..%2fapp.py", "/static/nothing.js"):
        assert _get(served.url, path)[0] == 404, path


def test_the_page_files_are_package_data():
    from importlib import resources

    static = resources.files("statewise.serve") / "static"
    names = {p.name for p in static.iterdir()}
    assert {"playground.html", "playground.js", "playground.css"} <= names


# ------------------------------------------------------------------ in Chromium
def _chromium() -> str | None:
    found = os.environ.get("STATEWISE_CHROMIUM")
    if found:
        return found
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the test extra's playwright is not installed"
    )
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium executable (apt-get install chromium, or set STATEWISE_CHROMIUM)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class Page:
    """A fresh playground page, with every request it made (others than this server's are
    aborted and kept in ``foreign``), its API request bodies and its console errors."""

    def __init__(self, browser, url: str) -> None:
        self.url = url
        self.context = browser.new_context()
        self.foreign: list[str] = []
        self.posts: list[tuple[str, dict]] = []
        self.errors: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", self._request)
        self.page.goto(url + "/")
        self.wait("() => document.getElementById('model-id').textContent !== '…'")

    def _route(self, route) -> None:
        if route.request.url.startswith(self.url + "/"):
            route.continue_()
        else:
            self.foreign.append(route.request.url)
            route.abort()

    def _request(self, req) -> None:
        if req.method == "POST":
            self.posts.append((urlsplit(req.url).path, json.loads(req.post_data or "null")))

    def text(self, selector: str) -> str:
        return self.page.text_content(selector)

    def finished(self) -> int:
        return int(self.page.get_attribute("#status", "data-finished"))

    def set_sampling(self, **fields: object) -> None:
        for name, value in fields.items():
            self.page.fill(f"#{name}", str(value))

    def send(self, timeout_s: float = 15) -> str:
        """Press Send and wait for the request to end; the status's state."""
        before = self.finished()
        self.page.click("#send")
        self.wait(
            "(n) => Number(document.getElementById('status').dataset.finished) > n",
            before,
            timeout_s,
        )
        return self.page.get_attribute("#status", "data-state")

    def wait_text(self, selector: str, expected: str, timeout_s: float = 5) -> None:
        self.wait("([s, t]) => document.querySelector(s).textContent === t", [selector, expected])

    def wait(self, predicate: str, arg: object = None, timeout_s: float = 5) -> None:
        """Wait until the JavaScript function ``predicate(arg)`` is true. (A function, not
        an expression: the page's Content-Security-Policy forbids the eval an expression
        needs.)"""
        self.page.wait_for_function(predicate, arg=arg, timeout=timeout_s * 1000)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser, served):
    opened = Page(browser, served.url)
    try:
        yield opened
        assert opened.foreign == [], "the page asked for something beyond the server"
        assert opened.errors == [], "the page logged errors"
    finally:
        opened.close()


def _completion(url: str, **body: object) -> str:
    status, answer = request(url, "POST", "/v1/completions", {"model": "tiny-chat", **body})
    assert status == 200, answer
    return answer["choices"][0]["text"]


def test_a_greedy_completion_shows_the_api_text_the_model_and_cache_hits(page, served):
    prompt = "First Citizen:\nBefore"
    assert page.text("#model-id") == "tiny-chat"
    slot_bytes = int(metrics(served.url)["statewise_slot_state_bytes"])
    assert slot_bytes < 1024  # the tiny model's state: shown in bytes
    assert page.text("#state-size") == f"{slot_bytes} B"
    hits = metrics(served.url)["statewise_cache_hits_total"]

    page.page.fill("#prompt", prompt)
    page.set_sampling(temperature=0, max_tokens=24)
    assert page.send() == "done"
    shown = page.text("#output")
    path, body = page.posts[-1]
    assert path == "/v1/completions"
    assert (body["prompt"], body["temperature"], body["max_tokens"]) == (prompt, 0, 24)
    assert body["stream"] is True
    assert page.text("#cache-hits") == f"{hits:g}"  # a new prompt: a miss

    # the same request through the HTTP API: the same text, and a hit on the cached prompt
    expected = _completion(served.url, prompt=prompt, temperature=0, max_tokens=24)
    assert shown == expected and len(expected) > 0
    assert metrics(served.url)["statewise_cache_hits_total"] == hits + 1

    # again from the page: the same text, and the panel shows the server's new hit count
    assert page.send() == "done"
    assert page.text("#output") == expected
    assert metrics(served.url)["statewise_cache_hits_total"] == hits + 2
    page.wait_text("#cache-hits", f"{hits + 2:g}")
    assert "24 tokens" in page.text("#status")


def test_chat_streams_the_api_reply_and_keeps_the_history(page, served):
    page.page.click("#mode-chat")
    assert page.page.is_hidden("#prompt") and page.page.is_visible("#chat-input")
    page.set_sampling(temperature=0, max_tokens=10)
    page.page.fill("#chat-input", "Who art thou?")
    assert page.send() == "done"
    reply = page.text("#chat-log .msg.assistant:last-child .content")
    messages = [{"role": "user", "content": "Who art thou?"}]
    status, answer = request(
        served.url,
        "POST",
        "/v1/chat/completions",
        {"messages": messages, "temperature": 0, "max_tokens": 10},
    )
    assert status == 200
    assert reply == answer["choices"][0]["message"]["content"]
    assert page.text("#chat-log .msg.user .content") == "Who art thou?"
    assert page.page.input_value("#chat-input") == ""

    page.page.fill("#chat-input", "Speak.")
    assert page.send() == "done"
    path, body = page.posts[-1]
    assert path == "/v1/chat/completions"
    assert body["messages"] == [
        *messages,
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "Speak."},
    ]
    assert page.page.locator("#chat-log .msg").count() == 4


def test_a_bad_value_shows_the_server_error(page, served):
    page.page.fill("#prompt", "To be")
    page.set_sampling(temperature=5)
    assert page.send() == "error"
    assert "temperature must be in [0, 2], got 5" in page.text("#status")
    assert page.page.is_enabled("#send") and page.page.is_disabled("#stop")
    page.errors.clear()  # the browser logs the 400 itself


def test_stop_ends_a_long_stream_and_frees_its_slot(page, served):
    before = metrics(served.url)
    assert page.page.is_disabled("#stop")
    page.page.fill("#prompt", "O Romeo")
    page.set_sampling(temperature=1, seed=3, max_tokens=LIMIT)
    page.page.click("#send")
    # text arrives while the request still runs: it streams
    page.wait("() => document.getElementById('output').textContent.length >= 40")
    assert page.page.get_attribute("#status", "data-state") == "streaming"
    assert page.page.is_disabled("#send") and page.page.is_enabled("#stop")
    page.page.click("#stop")
    page.wait("() => document.getElementById('status').dataset.state === 'stopped'")
    stopped_at = page.text("#output")

    deadline = time.monotonic() + 5
    while True:
        now = metrics(served.url)
        freed = now["statewise_requests_running"] == 0
        if now.get(CANCELLED, 0) == before.get(CANCELLED, 0) + 1 and freed:
            break
        assert time.monotonic() < deadline, "the server did not cancel the stopped request"
        time.sleep(0.05)
    generated = now["statewise_generated_tokens_total"] - before["statewise_generated_tokens_total"]
    assert len(stopped_at) <= generated < LIMIT
    page.wait_text("#slots", f"0 / {now['statewise_batch_slots']:g}")
    assert page.text("#output") == stopped_at  # nothing arrives after Stop
    assert page.page.is_enabled("#send") and page.page.is_disabled("#stop")
