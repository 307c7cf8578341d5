"""The byte-level BPE: exact round trips, streaming decode, saving and loading, the run
directory's copy."""

from __future__ import annotations

import json

import pytest

from statewise.errors import ConfigError, DataError
from statewise.tasks.tokenizer import (
    ByteTokenizer,
    checkpoint_tokenizer,
    install_tokenizer,
    load_tokenizer,
)

pytest.importorskip("tokenizers")
from statewise.tasks.bpe import train_bpe  # noqa: E402

TEXTS = [
    "To be, or not to be, that is the question:\r\n\tWhether 'tis nobler",
    "naïve café — ünïcödé ✓ 日本語 🙂 \u200b zero-width, trailing spaces   ",
    "\x00\x1f control bytes and a lone \ufffd replacement",
]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    root = tmp_path_factory.mktemp("bpe")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t * 20}) + "\n" for t in TEXTS))
    return train_bpe([str(corpus)], 400)


def test_round_trip_is_exact_and_merges_were_learnt(bpe):
    assert 256 < bpe.vocab_size <= 400  # the corpus may run out of pairs to merge
    for text in TEXTS + ["text never seen: Ωμέγα ∑ 🚀"]:
        ids = bpe.encode(text)
        assert all(0 <= i < bpe.vocab_size for i in ids)
        assert bpe.decode(ids) == text
    seen = TEXTS[0] * 3
    assert len(bpe.encode(seen)) < len(seen.encode()) / 2  # merges shorten seen text


def test_stream_decoder_emits_the_decoded_text_piece_by_piece(bpe):
    for text in TEXTS:
        ids = bpe.encode(text)
        decoder = bpe.stream_decoder()
        pieces = [decoder.step(i) for i in ids] + [decoder.flush()]
        assert "".join(pieces) == text
    byte_decoder = ByteTokenizer().stream_decoder()
    pieces = [byte_decoder.step(i) for i in "é✓".encode()]
    assert pieces == ["", "é", "", "", "✓"]


def test_save_load_and_identity(bpe, tmp_path):
    bpe.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.identity() == bpe.identity() and again.encode(TEXTS[1]) == bpe.encode(TEXTS[1])
    bare = load_tokenizer(tmp_path / "tokenizer.json")  # a file made by tokenizers directly
    assert bare.identity() == bpe.identity()
    assert isinstance(load_tokenizer(""), ByteTokenizer)
    assert isinstance(load_tokenizer("bytes"), ByteTokenizer)
    with pytest.raises(DataError, match="not a tokenizer"):
        load_tokenizer(tmp_path / "missing")


def test_run_copy_is_atomic_and_keeps_its_tokenizer(bpe, tmp_path):
    run = tmp_path / "run"
    snapshot = run / "checkpoints" / "step-00000002"
    snapshot.mkdir(parents=True)
    install_tokenizer(bpe, run / "tokenizer")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "tokenizer"]
    install_tokenizer(bpe, run / "tokenizer")  # the same one again: nothing to do
    with pytest.raises(ConfigError, match="another tokenizer"):
        install_tokenizer(ByteTokenizer(), run / "tokenizer")
    found = checkpoint_tokenizer(snapshot, configured="elsewhere/that/moved")
    assert found.identity() == bpe.identity()
    assert isinstance(checkpoint_tokenizer(tmp_path / "old_run", ""), ByteTokenizer)


def test_vocab_size_bounds(tmp_path):
    (tmp_path / "t.txt").write_text("abc")
    with pytest.raises(ValueError, match="vocab-size"):
        train_bpe([str(tmp_path / "t.txt")], 100)


def test_bits_per_byte_divides_by_the_validation_documents_bytes_per_token(bpe, tmp_path):
    """val_bits_per_byte of a subword task = val_loss / ln 2 / (UTF-8 bytes of the held-out
    documents / their tokens), counted here from the documents themselves."""
    import math

    import torch

    from statewise.tasks.text import build_text_task
    from statewise.train.evaluate import evaluate

    docs = tmp_path / "docs"
    docs.mkdir()
    texts = [f"{TEXTS[i % 3]} document {i} " * (3 + i % 4) for i in range(20)]
    for i, text in enumerate(texts):
        (docs / f"{i:02d}.txt").write_text(text)
    task = build_text_task("lm", str(docs), 8, 0.2, 0, bpe)
    val_text = bpe.decode(task.val_stream().tolist())
    held_out = [t for t in texts if t in val_text]  # each document's text is unique
    assert 0 < len(held_out) < len(texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in held_out)
    assert n_bytes == len(val_text.encode("utf-8"))
    n_tokens = task.val_stream().numel()
    assert task.val_bytes_per_token() == pytest.approx(n_bytes / n_tokens)
    assert 1 < task.val_bytes_per_token() < 8  # merges shorten the text

    class Uniform(torch.nn.Module):  # loss ln V per token, whatever the input
        def forward(self, ids, resets=None):
            return torch.zeros(*ids.shape, bpe.vocab_size)

    record = evaluate(Uniform(), task, 4, 2)
    assert record["val_loss"] == pytest.approx(math.log(bpe.vocab_size))
    bits = math.log2(bpe.vocab_size) / task.val_bytes_per_token()
    assert record["val_bits_per_byte"] == pytest.approx(bits)
