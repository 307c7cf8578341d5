"""The server as a user of the official ``openai`` client sees it: completions and chat,
streamed and not, several streams at once giving what they give one at a time."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from statewise.serve import CHAT_STOP, engine_from_checkpoint, render_chat
from tests.serve.conftest import running_server

openai = pytest.importorskip("openai")

PROMPTS = ["To be", "First Citizen:", "O Romeo", "What", "ROMEO:\nI", "All:", "Speak"]


@pytest.fixture(scope="module")
def served(checkpoint_dir):
    """One float64 server for the module (4 slots: 7 concurrent requests queue), and a
    separate float64 engine that runs requests alone as the reference."""
    engine = engine_from_checkpoint(checkpoint_dir, max_batch=4, dtype=torch.float64)
    alone = engine_from_checkpoint(checkpoint_dir, max_batch=1, dtype=torch.float64)
    with running_server(engine) as running:
        client = openai.OpenAI(
            base_url=running.url + "/v1", api_key="unused", max_retries=0, timeout=30
        )
        yield running, client, alone
        client.close()


def reference(alone, prompt, **sampling) -> str:
    """The text the engine gives for ``prompt`` run alone."""
    return alone.submit(prompt, **sampling).result()


def test_models_lists_the_checkpoint_name(served):
    _, client, _ = served
    assert [m.id for m in client.models.list().data] == ["tiny-chat"]


def test_completion_text_usage_and_finish_reason(served):
    _, client, alone = served
    out = client.completions.create(model="tiny-chat", prompt="To be", max_tokens=12, temperature=0)
    choice = out.choices[0]
    assert choice.text == reference(alone, "To be", max_tokens=12, temperature=0)
    assert choice.finish_reason == "length"
    prompt_tokens = len(alone.tokenizer.encode("To be"))
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (prompt_tokens, 12)
    assert out.usage.total_tokens == prompt_tokens + 12


def test_streamed_completion_equals_the_whole_one_and_ends_with_a_finish_reason(
    served, monkeypatch
):
    running, client, alone = served
    kwargs = dict(model="tiny-chat", prompt="O Romeo", max_tokens=30, temperature=0.9, seed=7)
    whole = client.completions.create(**kwargs).choices[0].text
    # A tick of this tiny model takes well under a millisecond, so a runner that outpaces
    # the event loop can legitimately finish all 30 tokens before the first piece is sent.
    # Ticks that take 20 ms (as a real model's do) give the loop time to send pieces.
    step = running.engine.step

    def slow_step():
        step()
        time.sleep(0.02)

    monkeypatch.setattr(running.engine, "step", slow_step)
    chunks = list(client.completions.create(stream=True, **kwargs))
    assert len(chunks) > 2  # pieces, not one blob
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert whole == reference(alone, "O Romeo", max_tokens=30, temperature=0.9, seed=7)


def test_stop_string_ends_the_text_before_it_streamed_or_not(served):
    _, client, alone = served
    full = reference(alone, "First Citizen:", max_tokens=40, temperature=0)
    stop = full[10:13]  # a piece of the greedy text: generation must end before it
    expected = full[: full.index(stop)]
    kwargs = dict(prompt="First Citizen:", max_tokens=40, temperature=0, stop=[stop, "@@@@"])
    out = client.completions.create(model="tiny-chat", **kwargs)
    assert (out.choices[0].text, out.choices[0].finish_reason) == (expected, "stop")
    chunks = list(client.completions.create(model="tiny-chat", stream=True, **kwargs))
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_uses_the_plain_template_streamed_or_not(served):
    _, client, alone = served
    messages = [
        {"role": "system", "content": "You speak verse."},
        {"role": "user", "content": "Who art thou?"},
    ]
    prompt = render_chat(messages)
    assert prompt == "System: You speak verse.\nUser: Who art thou?\nAssistant:"
    sampling = dict(max_tokens=25, temperature=0.8, seed=3)
    expected = reference(alone, prompt, stop=(CHAT_STOP,), **sampling)
    out = client.chat.completions.create(model="tiny-chat", messages=messages, **sampling)
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == expected
    assert out.usage.prompt_tokens == len(alone.tokenizer.encode(prompt))
    stream = client.chat.completions.create(
        model="tiny-chat",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        **sampling,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert chunks[-2].choices[0].finish_reason == out.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == out.usage.total_tokens


def test_concurrent_streams_equal_the_same_requests_one_at_a_time(served):
    running, client, alone = served
    requests = [
        dict(prompt=p, max_tokens=40 + 7 * i, temperature=0.0 if i % 2 else 1.0, seed=100 + i)
        for i, p in enumerate(PROMPTS)
    ]
    results: list[str | None] = [None] * len(requests)
    errors: list[BaseException] = []
    engine = running.engine
    ticks, decoded = engine.ticks, engine.decode_tokens

    def run(i: int) -> None:
        try:
            chunks = client.completions.create(model="tiny-chat", stream=True, **requests[i])
            results[i] = "".join(c.choices[0].text for c in chunks)
        except BaseException as err:  # surfaced below, not lost in the thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    # they ran batched: more tokens decoded than ticks taken
    assert engine.decode_tokens - decoded > 1.5 * (engine.ticks - ticks)
    one_at_a_time = [
        client.completions.create(model="tiny-chat", **r).choices[0].text for r in requests
    ]
    assert results == one_at_a_time
    assert results[0] == reference(alone, **requests[0])
    assert len(set(results)) == len(results)  # different requests, not one answer copied
