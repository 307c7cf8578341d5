"""Sessions and client-held state: a conversation continues from its state without
reading its history again, with exactly the tokens a fresh request reading that whole
history would get (float64, greedy), across a restart of the engine too."""

from __future__ import annotations

import pytest

from statewise.errors import ArgumentError, CheckpointError
from statewise.infer import Engine
from statewise.infer.state_io import decode_state_b64, encode_state_b64
from tests.infer.test_engine import CHUNK, make_model

FIRST, SECOND = [5, 17, 3, 99, 42, 7, 1], [8, 8, 200, 31]
GREEDY = dict(max_tokens=6, temperature=0.0)


@pytest.mark.parametrize("name", ["mingru", "lstm", "retnet", "mamba", "aaren"])
def test_a_session_continues_as_if_it_had_read_its_history(name, tmp_path):
    model = make_model(name)
    engine = Engine(model, max_batch=2, prefill_chunk=CHUNK, session_dir=tmp_path)
    one = engine.submit(FIRST, session="chat", **GREEDY)
    one.result()
    before = engine.prefill_tokens
    two = engine.submit(SECOND, session="chat", **GREEDY)
    two.result()
    assert engine.prefill_tokens - before == len(SECOND)  # the history is not read again
    assert two.state_tokens == len(FIRST) + 6 + len(SECOND) + 6
    history = FIRST + one.tokens + SECOND
    fresh = Engine(model, max_batch=1, prefill_chunk=CHUNK, state_cache_mb=0)
    whole = fresh.submit(history, **GREEDY)
    whole.result()
    assert two.tokens == whole.tokens
    # a new engine (a restarted server) on the same directory continues the same way
    again = Engine(model, max_batch=1, prefill_chunk=CHUNK, session_dir=tmp_path)
    third = again.submit([1, 2, 3], session="chat", **GREEDY)
    third.result()
    fresh_third = fresh.submit(history + two.tokens + [1, 2, 3], **GREEDY)
    fresh_third.result()
    assert third.tokens == fresh_third.tokens


def test_a_client_held_state_round_trips_through_base64(tmp_path):
    model = make_model("mamba")
    engine = Engine(model, max_batch=2, prefill_chunk=CHUNK)
    one = engine.submit(FIRST, keep_state=True, **GREEDY)
    one.result()
    text = encode_state_b64(one.state, model, tokens=one.state_tokens)
    state, meta = decode_state_b64(text, model)
    assert meta.tokens == len(FIRST) + 6
    hits = engine.cache.hits
    two = engine.submit(SECOND, state=state, **GREEDY)
    two.result()
    fresh = Engine(model, max_batch=1, prefill_chunk=CHUNK, state_cache_mb=0)
    whole = fresh.submit(FIRST + one.tokens + SECOND, **GREEDY)
    whole.result()
    assert two.tokens == whole.tokens
    assert engine.cache.hits == hits  # a request with its own state does not use the cache


def test_bad_sessions_and_states_are_refused(tmp_path):
    model = make_model("mingru")
    engine = Engine(model, session_dir=tmp_path)
    with pytest.raises(ArgumentError, match="session name"):
        engine.submit([1], session="../escape", **GREEDY)
    with pytest.raises(ArgumentError, match="not both"):
        engine.submit([1], session="a", state=model.init_state(1), **GREEDY)
    with pytest.raises(ArgumentError, match="does not fit"):
        engine.submit([1], state=make_model("lstm").init_state(1), **GREEDY)
    with pytest.raises(ArgumentError, match="session_dir"):
        Engine(model).submit([1], session="a", **GREEDY)
    with pytest.raises(ArgumentError, match="session directory is empty"):
        Engine(model, session_dir="")
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ArgumentError, match="is a file"):
        Engine(model, session_dir=tmp_path / "file")
    other = Engine(_other(), session_dir=tmp_path)
    other.submit([1, 2], session="theirs", **GREEDY).result()
    with pytest.raises((ArgumentError, CheckpointError), match="another model"):
        engine.submit([1], session="theirs", **GREEDY)


def _other():
    """A model of the same shape with other weights."""
    import torch

    model = make_model("mingru")
    with torch.no_grad():
        next(model.parameters()).add_(0.5)
    return model
