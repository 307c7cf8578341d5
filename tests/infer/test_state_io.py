"""Served state: saving, loading and checking one sequence's recurrent state."""

from __future__ import annotations

import base64
import json
import math
import os
import struct
import time
from functools import cache
from pathlib import Path

import pytest
import safetensors.torch
import torch

from statewise.errors import ArgumentError, ArgumentTypeError, CheckpointError
from statewise.infer import state_io
from statewise.infer.state_io import (
    decode_state_b64,
    encode_state_b64,
    load_state_file,
    model_fingerprint,
    save_state_file,
    state_from_bytes,
    state_to_bytes,
)
from statewise.models import build_model
from statewise.models.config import ModelConfig
from statewise.ops.tree import tree_leaves, tree_map

# layers whose states differ in kind: a tuple (lstm), a plain tensor (mingru), a dict with
# an integer counter (retnet), -inf allowed in "m" (aaren), a rolling KV cache with a
# position (local attention), a conv buffer beside an SSM state (mamba)
LAYERS = {
    "lstm": {},
    "mingru": {},
    "retnet": {},
    "aaren": {},
    "attention": {"window": 4},
    "mamba": {},
}
VOCAB = 32


def make(layer: str, seed: int = 0, d_model: int = 16, **config) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        layer=layer,
        d_model=d_model,
        n_layers=2,
        vocab_size=VOCAB,
        layer_kwargs=dict(LAYERS[layer]),
        **config,
    )
    return build_model(cfg).eval()


@cache
def model_of(layer: str) -> torch.nn.Module:
    """A shared model per layer; tests that change a model build their own."""
    return make(layer)


def read(model: torch.nn.Module, batch: int = 1, n_forward: int = 6, n_steps: int = 3, seed=1):
    """The state after a parallel forward over n_forward tokens and n_steps single steps."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, n_forward + n_steps), generator=g)
    with torch.no_grad():
        _, state = model(ids[:, :n_forward], return_state=True)
        for t in range(n_forward, n_forward + n_steps):
            _, state = model.step(ids[:, t], state)
    return state


def assert_same_tree(a, b) -> None:
    """Same nesting (container types, dict keys in order) and torch.equal leaves."""
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same_tree(a[k], b[k])
    else:
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tree(x, y)


def rewrite(data: bytes, edit_tensors=None, edit_meta=None) -> bytes:
    """The safetensors ``data`` with its tensors and/or metadata edited (a tampered file
    that is still valid safetensors and keeps the right fingerprint)."""
    tensors = safetensors.torch.load(data)
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8 : 8 + n])["__metadata__"]
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        edit_meta(meta)
    return safetensors.torch.save(tensors, metadata=meta)


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("layer", LAYERS)
def test_round_trip_is_exact_and_continues_identically(layer):
    model = model_of(layer)
    state = read(model)
    fresh = model.init_state(1)
    # the state has really moved away from its start, so equality below means something
    assert any(not torch.equal(a, b) for a, b in zip(tree_leaves(state), tree_leaves(fresh)))
    data = state_to_bytes(state, model, tokens=9)
    assert isinstance(data, bytes)
    restored, meta = state_from_bytes(data, model)
    assert_same_tree(restored, state)
    assert meta.tokens == 9 and meta.version == 1 and meta.nbytes == len(data)
    assert meta.fingerprint == model_fingerprint(model)
    # the restored state owns its memory, apart from the original's
    ptrs = {t.untyped_storage().data_ptr() for t in tree_leaves(state)}
    assert not ptrs & {t.untyped_storage().data_ptr() for t in tree_leaves(restored)}
    # continuing from the restored state is the same computation as from the original
    s_a, s_b = state, restored
    with torch.no_grad():
        for token in (3, 17, 0, 31):
            ids = torch.tensor([token])
            logits_a, s_a = model.step(ids, s_a)
            logits_b, s_b = model.step(ids, s_b)
            assert torch.equal(logits_a, logits_b)
    assert_same_tree(s_a, s_b)


@pytest.mark.parametrize("layer", LAYERS)
def test_row_of_a_batched_state_round_trips(layer):
    model = model_of(layer)
    state = read(model, batch=3, seed=2)
    for row in range(3):
        data = state_to_bytes(state, model, row=row)
        restored, meta = state_from_bytes(data, model)
        assert meta.tokens is None
        assert_same_tree(restored, tree_map(lambda t, r=row: t[r : r + 1], state))
    # rows differ, so a wrong row would have been noticed
    a, _ = state_from_bytes(state_to_bytes(state, model, row=0), model)
    b, _ = state_from_bytes(state_to_bytes(state, model, row=2), model)
    assert any(not torch.equal(x, y) for x, y in zip(tree_leaves(a), tree_leaves(b)))
    with pytest.raises(ArgumentError, match="3 sequences: pass row="):
        state_to_bytes(state, model)
    with pytest.raises(ArgumentError, match=r"row must be in \[0, 3\), got 3"):
        state_to_bytes(state, model, row=3)
    with pytest.raises(ArgumentTypeError, match="row must be an int"):
        state_to_bytes(state, model, row=1.0)


def test_aaren_keeps_minus_inf_where_the_layer_allows_it():
    model = model_of("aaren")
    fresh = model.init_state(1)
    assert torch.isneginf(fresh[0]["m"]).all()  # an empty prefix's running max
    restored, _ = state_from_bytes(state_to_bytes(fresh, model, tokens=0), model)
    assert_same_tree(restored, fresh)
    data = state_to_bytes(read(model), model)

    def put(key: str, value: float):
        return lambda ts: ts[key].view(-1).__setitem__(0, value)

    for key, value, message in (
        ("0.u", -math.inf, r"state\[0\]\['u'\] contains NaN or inf"),
        ("1.m", math.inf, r"state\[1\]\['m'\] contains NaN or \+inf"),
        ("1.m", math.nan, r"state\[1\]\['m'\] contains NaN or \+inf"),
    ):
        with pytest.raises(ArgumentError, match=message):
            state_from_bytes(rewrite(data, put(key, value)), model)
    # -inf in "m" after reading tokens is accepted
    state_from_bytes(rewrite(data, put("1.m", -math.inf)), model)


# ----------------------------------------------------------------------------- fingerprint
def test_fingerprint_is_stable_and_changes_with_weights_and_config():
    a, b = make("mingru"), make("mingru")
    fp = model_fingerprint(a)
    assert len(fp) == 32 and int(fp, 16) >= 0
    assert fp == model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():  # the smallest change to one weight
        w = b.backbone.blocks[1].mixer.state_dict()
        name = next(iter(w))
        p = dict(b.backbone.blocks[1].mixer.named_parameters())[name]
        p.view(-1)[5] = torch.nextafter(p.view(-1)[5], torch.tensor(math.inf))
    assert model_fingerprint(b) != fp
    assert model_fingerprint(make("mingru", dropout=0.1)) != fp  # same weights, other config
    assert model_fingerprint(make("mingru", seed=1)) != fp


def test_fingerprint_of_a_10m_parameter_model_is_fast():
    torch.manual_seed(0)
    model = build_model(ModelConfig(layer="mingru", d_model=512, n_layers=4, vocab_size=4096))
    n = sum(p.numel() for p in model.parameters())
    assert 9e6 < n < 14e6
    model_fingerprint(model)
    start = time.perf_counter()
    model_fingerprint(model)
    seconds = time.perf_counter() - start
    print(f"model_fingerprint: {n / 1e6:.1f} M parameters in {seconds * 1e3:.0f} ms")
    assert seconds < 0.5


@pytest.mark.parametrize(
    "other", [{"seed": 1}, {"d_model": 32}], ids=["another seed", "another d_model"]
)
def test_a_state_of_another_model_is_refused(other):
    model = model_of("retnet")
    data = state_to_bytes(read(model), model)
    stranger = make("retnet", **other)
    with pytest.raises(ArgumentError, match="made by another model: its model fingerprint is"):
        state_from_bytes(data, stranger)
    # a cached fingerprint passed by the caller is what is compared
    with pytest.raises(ArgumentError, match="another model"):
        state_from_bytes(data, model, fingerprint="0" * 32)
    state_from_bytes(data, model, fingerprint=model_fingerprint(model))


# ----------------------------------------------------------------------------- tampering
def _set(key, value):
    def edit(ts):
        ts[key] = value(ts[key])

    return edit


def _nan(t):
    t = t.clone()
    t.view(-1)[3] = math.nan
    return t


TAMPERED = {
    "leaf shape": (
        _set("0.kv", lambda t: torch.zeros(1, 4, 4, 5)),
        None,
        r"state\[0\]\['kv'\] has shape \(1, 4, 4, 5\), expected \(1, 4, 4, 4\)",
    ),
    "batch of 2": (
        _set("1.kv", lambda t: t.expand(2, -1, -1, -1).contiguous()),
        None,
        r"state\[1\]\['kv'\] has shape \(2, 4, 4, 4\)",
    ),
    "leaf dtype": (
        _set("0.kv", lambda t: t.double()),
        None,
        r"state\[0\]\['kv'\] has dtype torch.float64, expected torch.float32",
    ),
    "counter dtype": (
        _set("0.pos", lambda t: t.float()),
        None,
        r"state\[0\]\['pos'\] has dtype torch.float32, expected torch.int64",
    ),
    "NaN": (_set("1.kv", _nan), None, r"state\[1\]\['kv'\] contains NaN or inf"),
    "inf": (
        _set("0.kv", lambda t: t.clone().fill_(math.inf)),
        None,
        r"state\[0\]\['kv'\] contains NaN or inf",
    ),
    "negative counter": (
        _set("0.pos", lambda t: torch.full_like(t, -1)),
        None,
        r"state\[0\]\['pos'\] holds a negative count \(-1\)",
    ),
    "missing tensor": (lambda ts: ts.pop("1.pos"), None, "tensor '1.pos' is missing"),
    "extra tensor": (
        lambda ts: ts.__setitem__("2.kv", torch.zeros(1)),
        None,
        r"tensors \['2.kv'\] are not in its structure",
    ),
    "missing key in structure": (
        lambda ts: ts.pop("1.pos"),
        lambda m: m.__setitem__("structure", m["structure"].replace(',["pos","1.pos"]', "")),
        r"state\[1\] has keys \['kv'\], expected \['kv', 'pos'\]",
    ),
    "one block only": (
        lambda ts: [ts.pop(k) for k in ("1.kv", "1.pos")],
        lambda m: m.__setitem__(
            "structure", json.dumps({"list": json.loads(m["structure"])["list"][:1]})
        ),
        "1 blocks, the model has 2",
    ),
    "structure not JSON": (None, lambda m: m.__setitem__("structure", "{"), "not JSON"),
    "bad structure entry": (
        None,
        lambda m: m.__setitem__("structure", '{"set":[]}'),
        "bad structure entry",
    ),
    "format version": (
        None,
        lambda m: m.__setitem__("version", "2"),
        "format version '2' cannot be read: this statewise reads version 1",
    ),
    "other format": (
        None,
        lambda m: m.__setitem__("format", "llama.kv"),
        "not a statewise state: a safetensors file whose metadata format is 'llama.kv'",
    ),
    "negative tokens": (
        None,
        lambda m: m.__setitem__("tokens", "-3"),
        "tokens must be a count >= 0, got '-3'",
    ),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_a_tampered_state_is_refused(case):
    model = model_of("retnet")
    data = state_to_bytes(read(model), model, tokens=9)
    state_from_bytes(rewrite(data), model)  # rewriting alone changes nothing that matters
    edit_tensors, edit_meta, message = TAMPERED[case]
    with pytest.raises(ArgumentError, match=message):
        state_from_bytes(rewrite(data, edit_tensors, edit_meta), model)


def test_a_tuple_saved_as_a_list_is_refused():
    model = model_of("lstm")
    data = state_to_bytes(read(model), model)
    listed = rewrite(
        data,
        edit_meta=lambda m: m.__setitem__("structure", m["structure"].replace("tuple", "list")),
    )
    with pytest.raises(ArgumentError, match=r"state\[0\] is a list, expected a tuple"):
        state_from_bytes(listed, model)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, world",
        bytes(range(256)) * 3,
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}",
        safetensors.torch.save({"x": torch.zeros(2)}),  # valid safetensors, no statewise metadata
    ],
    ids=["empty", "text", "binary", "bad header", "foreign safetensors"],
)
def test_garbage_bytes_are_refused(data):
    with pytest.raises(ArgumentError, match="^not a statewise state"):
        state_from_bytes(data, model_of("mingru"))


def test_truncated_and_oversized_bytes_are_refused():
    model = model_of("mamba")
    data = state_to_bytes(read(model), model)
    for cut in (len(data) - 1, len(data) // 2, 7):
        with pytest.raises(ArgumentError, match="not a statewise state"):
            state_from_bytes(data[:cut], model)
    with pytest.raises(ArgumentError, match="more than the .* its state can take"):
        state_from_bytes(data + bytes(200_000), model)
    with pytest.raises(ArgumentTypeError, match="must be bytes, got str"):
        state_from_bytes(data.decode("latin-1"), model)
    state_from_bytes(bytearray(data), model)
    state_from_bytes(memoryview(data), model)


def test_saving_refuses_a_state_the_model_could_not_use():
    model = model_of("mingru")
    state = read(model)
    bad = [state[0], state[1].clone().fill_(math.nan)]
    with pytest.raises(ArgumentError, match=r"state\[1\] contains NaN or inf"):
        state_to_bytes(bad, model)
    with pytest.raises(ArgumentError, match="1 blocks, the model has 2"):
        state_to_bytes(state[:1], model)
    with pytest.raises(ArgumentError, match=r"state\[0\] must be a tensor, got tuple"):
        state_to_bytes(read(model_of("lstm")), model)
    with pytest.raises(ArgumentError, match="tokens must be >= 0"):
        state_to_bytes(state, model, tokens=-1)
    with pytest.raises(ArgumentTypeError, match="tokens must be an int"):
        state_to_bytes(state, model, tokens=True)
    with pytest.raises(ArgumentTypeError, match="a state leaf must be a tensor"):
        state_to_bytes([state[0], [1.0]], model)


# ----------------------------------------------------------------------------- base64
def test_base64_round_trip_and_bad_base64():
    model = model_of("attention")
    state = read(model)
    text = encode_state_b64(state, model, tokens=9)
    assert isinstance(text, str) and json.loads(json.dumps({"state": text}))["state"] == text
    restored, meta = decode_state_b64(text, model)
    assert_same_tree(restored, state)
    assert meta.tokens == 9
    assert decode_state_b64(text.encode("ascii"), model)[1].tokens == 9
    for bad in ("not base64!!", text[:-1], "é" + text):
        with pytest.raises(ArgumentError, match="not valid base64"):
            decode_state_b64(bad, model)
    with pytest.raises(ArgumentError, match="not a statewise state"):  # valid base64, not a state
        decode_state_b64(base64.b64encode(b"hello, world").decode(), model)
    with pytest.raises(ArgumentError, match="base64 characters, more than"):
        decode_state_b64("A" * 400_000, model)
    with pytest.raises(ArgumentTypeError, match="must be a str"):
        decode_state_b64(123, model)


# ----------------------------------------------------------------------------- files
def test_file_round_trip_leaves_no_temporary_file(tmp_path: Path):
    model = model_of("mamba")
    state = read(model)
    path = save_state_file(tmp_path / "s.safetensors", state, model, tokens=9)
    assert path == tmp_path / "s.safetensors"
    assert os.listdir(tmp_path) == ["s.safetensors"]
    restored, meta = load_state_file(str(path), model)
    assert_same_tree(restored, state)
    assert meta.tokens == 9
    # a second save replaces the file
    later = read(model, n_steps=5)
    save_state_file(path, later, model, tokens=11)
    assert os.listdir(tmp_path) == ["s.safetensors"]
    restored, meta = load_state_file(path, model)
    assert_same_tree(restored, later)
    assert meta.tokens == 11


def test_a_failed_save_keeps_the_old_file(tmp_path: Path, monkeypatch):
    model = model_of("retnet")
    path = save_state_file(tmp_path / "s.safetensors", read(model), model)
    before = path.read_bytes()
    # refused before anything is written
    nan_state = tree_map(
        lambda t: t.clone().fill_(math.nan) if t.is_floating_point() else t, read(model)
    )
    with pytest.raises(ArgumentError, match="contains NaN"):
        save_state_file(path, nan_state, model)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["s.safetensors"]

    # a failure while the temporary file is written: removed, the old file untouched
    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state_io.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        save_state_file(path, read(model, n_steps=5), model)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["s.safetensors"]
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="is not a directory"):
        save_state_file(tmp_path / "missing" / "s.safetensors", read(model), model)


def test_loading_only_reads(tmp_path: Path, monkeypatch):
    model = model_of("aaren")
    path = save_state_file(tmp_path / "s.safetensors", read(model), model)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    stat = path.stat()

    def no_writing(*args, **kwargs):
        raise AssertionError("loading a state tried to write")

    monkeypatch.setattr(state_io.tempfile, "mkstemp", no_writing)
    monkeypatch.setattr(state_io.os, "replace", no_writing)
    path.chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        load_state_file(path, model)
    finally:
        tmp_path.chmod(0o755)
        path.chmod(0o644)
    after = path.stat()
    assert (after.st_mtime_ns, after.st_size) == (stat.st_mtime_ns, stat.st_size)
    assert os.listdir(tmp_path) == ["s.safetensors"]


def test_bad_files_are_refused_naming_the_file(tmp_path: Path):
    model = model_of("lstm")
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(
        CheckpointError, match=r"nope.safetensors: no saved state there \(file not found\)"
    ):
        load_state_file(missing, model)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a state")
    with pytest.raises(CheckpointError, match="garbage.safetensors: not a statewise state"):
        load_state_file(garbage, model)
    foreign = save_state_file(
        tmp_path / "foreign.safetensors", read(make("lstm", seed=3)), make("lstm", seed=3)
    )
    with pytest.raises(
        CheckpointError, match="foreign.safetensors: the state was made by another model"
    ):
        load_state_file(foreign, model)
    with pytest.raises(CheckpointError, match="is a directory"):
        load_state_file(tmp_path, model)
    with pytest.raises(ArgumentTypeError, match="path must be a str"):
        load_state_file(3, model)
