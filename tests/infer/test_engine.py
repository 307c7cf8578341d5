"""The batching engine: each request gets what it gets alone (float64: the same tokens,
greedy or sampled with a seed) while requests of different prompt lengths join and leave
at different ticks; continuous admission; prefill chunks interleaved with decoding; the
prefix state cache; stop strings; bad requests."""

from __future__ import annotations

import pytest
import torch

import statewise.layers as L
from statewise.errors import ArgumentError
from statewise.infer import Engine
from statewise.models import ModelConfig, build_model
from statewise.ops.tree import tree_map

VOCAB = 256  # the byte tokenizer's
CHUNK = 5  # prefill chunk: prompts of up to 13 tokens take 1 to 3 chunks


def make_model(layer: str, dtype: torch.dtype = torch.float64, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(layer=layer, d_model=16, n_layers=2, vocab_size=VOCAB, **kw))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # off the init (rwkv's zero output projection ignores history)
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.to(dtype).eval()


def prompts(n: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(0, VOCAB, (2 + (5 * i) % 12,), generator=g).tolist() for i in range(n)]


def engine_tokens(engine, prompt, sampling) -> list[int]:
    stream = engine.submit(prompt, **sampling)
    stream.result()
    return stream.tokens


SAMPLINGS = [
    dict(temperature=0.0),
    dict(temperature=0.9, top_k=12, top_p=0.9),  # the seed is set per request below
]


@pytest.mark.parametrize("name", L.names())
def test_each_request_gets_what_it_gets_alone(name):
    """7 requests on 3 slots, prompts of 2 to 13 tokens (1 to 3 prefill chunks), 3 to 9 new
    tokens each, 2 of them submitted only after 4 ticks: every request's tokens equal its
    tokens alone, and those equal LanguageModel.generate's (one forward over the prompt,
    then steps) for prompts of one chunk. float64, on the decode path "auto" picks."""
    model = make_model(name)
    for stream, prompt, sampling in requests_alone_and_batched(model, "auto"):
        if len(prompt) <= CHUNK:
            reference = model.generate(
                torch.tensor([prompt]),
                sampling["max_tokens"],
                sampling["temperature"],
                sampling.get("top_k"),
                sampling.get("top_p"),
                sampling["seed"],
            )
            assert stream.tokens == reference[0, len(prompt) :].tolist()


FUSED_LAYERS = ["mingru", "lstm", "gru", "rnn", "rglru", "mamba", "mamba2", "rwkv", "mlstm"]


@pytest.mark.parametrize("name", FUSED_LAYERS)
def test_fused_decode_gives_the_same_tokens_alone_or_batched_in_float32(name):
    """Through the fused decode step, whose rows do not share arithmetic, the same holds in
    float32 (the PyTorch step's GEMMs round by batch size there)."""
    requests_alone_and_batched(make_model(name, torch.float32), "fused")


def requests_alone_and_batched(model, decode: str) -> list:
    """Runs the 7 requests (see above) batched and each alone, asserts the same tokens;
    returns (stream, prompt, sampling) of each."""
    engine = Engine(model, max_batch=3, prefill_chunk=CHUNK, state_cache_mb=0, decode=decode)
    cases = [
        (p, dict(SAMPLINGS[i % 2], max_tokens=3 + (2 * i) % 7, seed=100 + i))
        for i, p in enumerate(prompts(7))
    ]
    streams = [engine.submit(p, **s) for p, s in cases[:5]]
    for _ in range(4):
        engine.step()
    streams += [engine.submit(p, **s) for p, s in cases[5:]]
    while engine.step():
        pass
    for stream, (prompt, sampling) in zip(streams, cases):
        assert stream.done and stream.finish_reason == "length"
        solo = Engine(model, max_batch=1, prefill_chunk=CHUNK, state_cache_mb=0, decode=decode)
        assert stream.tokens == engine_tokens(solo, prompt, sampling)
    assert engine.free and sorted(engine.free) == [0, 1, 2]  # every slot back
    return [(stream, prompt, sampling) for stream, (prompt, sampling) in zip(streams, cases)]


@pytest.mark.parametrize("name", ["mingru", "lstm", "mamba", "retnet", "rwkv", "attention"])
def test_float32_decode_logits_batched_within_tolerance(name):
    """In float32 a batched step's GEMMs round differently from batch 1's (their blocking
    depends on the rows); the logits of a row batched with 15 others stay within 1e-5 of
    the row alone, relative to their scale (measured here: 2e-7 to 6e-7; the tolerance leaves
    room for other machines' GEMM blocking and still catches a wrong row, which is O(1))."""
    model = make_model(name, torch.float32)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (16, 6), generator=g)
    with torch.no_grad():
        _, state = model(ids, return_state=True)
        batched, _ = model.step(ids[:, -1], state)
        rows = torch.cat([model.step(ids[r : r + 1, -1], _row(state, r))[0] for r in range(16)])
    scale = rows.abs().max()
    assert (batched - rows).abs().max() <= 1e-5 * scale


def _row(state, r):
    return tree_map(lambda t: t[r : r + 1], state)


def test_a_request_is_admitted_as_soon_as_a_slot_frees():
    model = make_model("mingru")
    engine = Engine(model, max_batch=2, prefill_chunk=CHUNK, state_cache_mb=0)
    short = engine.submit([1, 2], max_tokens=2, temperature=0)
    long = engine.submit([3, 4], max_tokens=20, temperature=0)
    queued = engine.submit([5, 6], max_tokens=2, temperature=0)
    while not short.done:
        engine.step()
    assert queued._slot < 0 and not long.done
    engine.step()  # the next tick admits it into short's slot (long's prefill goes first)
    assert queued._slot >= 0 and not long.done
    engine.step()
    assert queued.tokens and not long.done  # not waiting for the batch to drain
    while engine.step():
        pass
    assert long.done and len(long.tokens) == 20


def test_a_long_prompt_does_not_stall_running_streams():
    """A 40-token prompt takes 8 prefill ticks of 5 tokens; a stream already decoding gets
    one token in each of them."""
    model = make_model("mingru")
    engine = Engine(model, max_batch=2, prefill_chunk=CHUNK, state_cache_mb=0)
    running = engine.submit([1, 2], max_tokens=30, temperature=0)
    engine.step()
    before = len(running.tokens)
    reading = engine.submit(list(range(30)) + list(range(10)), max_tokens=1, temperature=0)
    for tick in range(8):
        engine.step()
        assert len(running.tokens) == before + tick + 1
    assert reading._pos == 40 and reading.done


def test_prefix_cache_hits_a_repeated_prompt_and_a_longer_one():
    model = make_model("retnet")
    engine = Engine(model, max_batch=2, prefill_chunk=CHUNK, state_cache_mb=1)
    prompt = list(range(12))
    first = engine.submit(prompt, max_tokens=6, temperature=0)
    first.result()
    assert (engine.cache.hits, engine.cache.misses) == (0, 1)
    again = engine.submit(prompt, max_tokens=6, temperature=0)
    ticks = engine.ticks
    again.result()
    assert (engine.cache.hits, again.cached_tokens) == (1, 12)
    assert again.tokens == first.tokens
    assert engine.ticks - ticks == 5  # no prefill tick: the first token comes from the cache
    longer = engine.submit(prompt[:10] + [30, 31, 29], max_tokens=4, temperature=0)
    longer.result()
    assert longer.cached_tokens == 10  # the chunk boundary at 10 tokens
    solo = Engine(model, max_batch=1, prefill_chunk=CHUNK, state_cache_mb=0)
    assert longer.tokens == engine_tokens(
        solo, prompt[:10] + [30, 31, 29], dict(max_tokens=4, temperature=0)
    )


def test_prefix_cache_stays_within_its_budget():
    model = make_model("mingru")
    one = Engine(model, state_cache_mb=64)
    one.submit(list(range(8)), max_tokens=1, temperature=0).result()
    entry_bytes = one.cache.bytes
    engine = Engine(model, prefill_chunk=100, state_cache_mb=2.5 * entry_bytes / 2**20)
    for start in range(4):
        engine.submit([start] * 8, max_tokens=1, temperature=0).result()
    assert len(engine.cache.entries) == 2 and engine.cache.bytes <= engine.cache.max_bytes
    engine.submit([0] * 8, max_tokens=1, temperature=0).result()  # evicted first
    engine.submit([3] * 8, max_tokens=1, temperature=0).result()  # most recent: kept
    assert (engine.cache.hits, engine.cache.misses) == (1, 5)


def test_stop_strings_end_the_text_before_them():
    model = make_model("mingru")
    engine = Engine(model, max_batch=2, state_cache_mb=0)
    full = engine.submit("ab", max_tokens=12, temperature=0).result()
    ids = engine.tokenizer.encode(full)
    stop = engine.tokenizer.decode(ids[4:6])
    assert stop
    stream = engine.submit("ab", max_tokens=12, temperature=0, stop=[stop])
    pieces = list(stream)
    assert stream.finish_reason == "stop"
    assert stream.text == full[: full.find(stop)] == "".join(pieces)


def test_cancel_frees_the_slot():
    engine = Engine(make_model("lstm"), max_batch=1, state_cache_mb=0)
    stream = engine.submit([1, 2, 3], max_tokens=50, temperature=0)
    engine.step()
    stream.cancel()
    assert stream.done and stream.finish_reason == "cancelled" and engine.free == [0]
    assert not engine.busy


@pytest.mark.parametrize(
    "prompt, sampling, words",
    [
        ("", {}, "empty"),
        ([1, VOCAB], {}, "token ids"),
        ([1, 2], {"temperature": float("nan")}, "temperature"),
        ([1, 2], {"top_p": 1.5}, "top_p"),
        ([1, 2], {"max_tokens": -1}, "max_tokens"),
        ([1, 2], {"stop": "x"}, "stop"),
        ([1, 2], {"colour": "red"}, "colour"),
    ],
)
def test_bad_requests_are_refused_and_disturb_nothing(prompt, sampling, words):
    engine = Engine(make_model("mingru"), max_batch=2, state_cache_mb=0)
    running = engine.submit([1, 2], max_tokens=5, temperature=0)
    with pytest.raises((ArgumentError, TypeError), match=words):
        engine.submit(prompt, **sampling)
    running.result()
    assert len(running.tokens) == 5


def test_global_attention_refuses_a_request_past_its_cache():
    engine = Engine(make_model("attention", layer_kwargs={"max_len": 16}), state_cache_mb=0)
    with pytest.raises(ArgumentError, match="max_len"):
        engine.submit(list(range(10)), max_tokens=8)
    fits = engine.submit(list(range(10)), max_tokens=6)  # 16 tokens: exactly max_len
    fits.result()
    assert len(fits.tokens) == 6 and fits.finish_reason == "length"
