"""Sessions and client-held state over HTTP (statewise extensions of the request body):
the second turn of a session, or a request starting from a state the client kept, gives
the text a fresh request over the whole history gives (float64, greedy)."""

from __future__ import annotations

import json

import pytest
import torch

from statewise.infer.engine import Engine
from statewise.infer.state_io import decode_state_b64
from statewise.ops.tree import tree_leaves
from statewise.train import checkpoint
from tests.serve.conftest import running_server
from tests.serve.http import request

GREEDY = {"max_tokens": 8, "temperature": 0}


@pytest.fixture(scope="module")
def model(checkpoint_dir):
    return checkpoint.read(checkpoint_dir).model().to(torch.float64)


def fresh_text(model, text: str) -> str:
    return Engine(model, max_batch=1, state_cache_mb=0).submit(text, **GREEDY).result()


def test_a_session_continues_over_http(model, tmp_path):
    engine = Engine(model, max_batch=2, session_dir=tmp_path)
    with running_server(engine) as server:
        status, one = request(
            server.url, "POST", "/v1/completions", {"prompt": "ROMEO:", "session": "s1", **GREEDY}
        )
        assert status == 200, one
        status, two = request(
            server.url, "POST", "/v1/completions", {"prompt": "JULIET:", "session": "s1", **GREEDY}
        )
        assert status == 200, two
        first = one["choices"][0]["text"]
        assert two["choices"][0]["text"] == fresh_text(model, "ROMEO:" + first + "JULIET:")
        assert (tmp_path / "s1.safetensors").is_file()
        status, bad = request(
            server.url, "POST", "/v1/completions", {"prompt": "x", "session": "../up", **GREEDY}
        )
        assert status == 400 and "session name" in bad["error"]["message"]


def test_a_client_state_round_trips_streamed_or_not(model):
    engine = Engine(model, max_batch=2)
    with running_server(engine) as server:
        body = {"prompt": "ROMEO:", "return_state": True, **GREEDY}
        status, one = request(server.url, "POST", "/v1/completions", body)
        assert status == 200 and one["state_tokens"] == len("ROMEO:") + 8
        follow = {"prompt": "JULIET:", "state": one["state"], **GREEDY}
        status, two = request(server.url, "POST", "/v1/completions", follow)
        assert status == 200, two
        expected = fresh_text(model, "ROMEO:" + one["choices"][0]["text"] + "JULIET:")
        assert two["choices"][0]["text"] == expected
        # streamed: the chunk with the finish reason carries the state
        status, sse = request(server.url, "POST", "/v1/completions", {**body, "stream": True})
        events = [e[len("data: ") :] for e in sse["text"].split("\n\n") if e.startswith("data: ")]
        assert status == 200 and events[-1] == "[DONE]"

        last = json.loads(events[-2])
        assert last["choices"][0]["finish_reason"] == "length"
        assert last["state_tokens"] == one["state_tokens"]
        streamed, _ = decode_state_b64(last["state"], model)  # (safetensors' metadata
        whole, _ = decode_state_b64(one["state"], model)  # order varies: compare tensors)
        assert all(torch.equal(a, b) for a, b in zip(tree_leaves(streamed), tree_leaves(whole)))
        # a state that is not one, or one of another model, is a 400 naming the field
        for text, words in ((one["state"][:-8], "state"), ("%%%", "base64")):
            status, bad = request(
                server.url, "POST", "/v1/completions", {"prompt": "a", "state": text}
            )
            assert status == 400 and bad["error"]["param"] == "state", bad
            assert words in bad["error"]["message"]
        status, bad = request(
            server.url, "POST", "/v1/completions", {"prompt": "a", "session": "x"}
        )
        assert status == 400 and "--session-dir" in bad["error"]["message"]


def test_another_models_state_is_refused(model, checkpoint_dir):
    other = checkpoint.read(checkpoint_dir).model().to(torch.float64)
    with torch.no_grad():
        next(other.parameters()).add_(0.25)
    with running_server(Engine(other)) as theirs:
        status, one = request(
            theirs.url, "POST", "/v1/completions", {"prompt": "a", "return_state": True, **GREEDY}
        )
        assert status == 200
    with running_server(Engine(model)) as ours:
        status, bad = request(
            ours.url, "POST", "/v1/completions", {"prompt": "b", "state": one["state"]}
        )
        assert status == 400 and "another model" in bad["error"]["message"]
