"""How the engine chooses its decode step (statewise.infer.decode_path)."""

from __future__ import annotations

import pytest
import torch

from statewise import kernels
from statewise.errors import ArgumentError
from statewise.infer import Engine
from statewise.infer.decode_path import choose_decode_path
from tests.infer.fused_check import make_model


def test_auto_measures_both_paths_and_keeps_the_crossover():
    model = make_model("mingru", torch.float32)
    path = choose_decode_path(model, "auto", 8)
    assert list(path.timings) == [1, 2, 4, 8][: len(path.timings)]
    assert all(f > 0 and t > 0 for f, t in path.timings.values())
    faster = [b for b, (f, t) in path.timings.items() if f <= t]
    # the crossover: fused up to the last size of the leading run of sizes where it won
    expected = 0
    for b in path.timings:
        if b not in faster:
            break
        expected = b
    assert path.fused_max_batch == expected
    assert (path.fused is not None) == (expected > 0)
    assert path.uses_fused(1) == (expected >= 1) and not path.uses_fused(expected + 1)
    assert "decode:" in path.describe()


def test_forced_paths():
    model = make_model("mingru", torch.float32)
    fused = choose_decode_path(model, "fused", 5)
    assert fused.uses_fused(5) and not fused.uses_fused(6)
    assert not choose_decode_path(model, "torch", 5).uses_fused(1)
    with pytest.raises(ArgumentError, match="decode must be one of"):
        choose_decode_path(model, "fast", 5)


def test_a_model_without_a_fused_step():
    model = make_model("s4d", torch.float32, vocab_size=256)  # the byte tokenizer's
    with pytest.raises(ArgumentError, match="s4d|S4D"):
        Engine(model, decode="fused")
    engine = Engine(model, decode="auto")
    assert not engine.decode_path.uses_fused(1) and "no fused step" in engine.decode_path.reason


def test_the_torch_backend_turns_fusing_off():
    model = make_model("mingru", torch.float32)
    with kernels.use("torch"):
        path = choose_decode_path(model, "auto", 4)
    assert path.fused is None and "torch backend" in path.reason


def test_measuring_does_not_fill_a_small_global_cache():
    """Each timed call starts from the initial state: a global attention model whose KV
    cache holds 3 tokens is measured and served."""
    model = make_model(
        "attention", torch.float32, vocab_size=256, layer_kwargs={"attention": {"max_len": 3}}
    )
    engine = Engine(model, max_batch=4)
    assert engine.decode_path.timings
    assert len(engine.generate_many([[1]], max_tokens=2, temperature=0)) == 1


def test_a_memory_token_model_is_served_by_the_pytorch_step():
    """A Recurrent Memory Transformer's state is its memory and segment, not the blocks':
    the fused decoder refuses it, and the engine serves it through model.step (greedy
    tokens equal LanguageModel.generate's, across a segment boundary)."""
    model = make_model("attention", torch.float64, vocab_size=256, memory_tokens=2, segment_len=4)
    path = choose_decode_path(model, "auto", 2)
    assert path.fused is None and "Memory Transformer" in path.reason
    with pytest.raises(ArgumentError, match="Memory Transformer"):
        choose_decode_path(model, "fused", 2)
    engine = Engine(model, max_batch=2, prefill_chunk=3)
    stream = engine.submit([5, 6, 7], max_tokens=6, temperature=0)
    stream.result()
    expected = model.generate(torch.tensor([[5, 6, 7]]), 6, temperature=0.0)
    assert stream.tokens == expected[0, 3:].tolist()
