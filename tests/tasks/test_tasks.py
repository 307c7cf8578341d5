from __future__ import annotations

import pytest
import torch

from statewise.tasks import IGNORE, MQAR, ByteTokenizer, CharLM, builtin_corpus


def test_byte_tokenizer_round_trips_and_streams_multibyte_text():
    tok = ByteTokenizer()
    text = "naïve café — ünïcödé ✓"
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids) and tok.decode(ids) == text
    decoder, pieces = tok.stream_decoder(), []
    for i in ids:
        pieces.append(decoder.decode(bytes([i])))
    assert "".join(pieces) == text
    assert "" in pieces  # a multi-byte character waits for its last byte
    assert tok.decode([0xFF]) == "\ufffd"


def test_builtin_corpus_is_the_standard_library():
    text = builtin_corpus()
    assert len(text) > 1_000_000 and "def " in text and "import " in text
    assert builtin_corpus() == text


def test_char_lm_batches_are_shifted_windows_fixed_by_step():
    text = "".join(chr(97 + i % 26) for i in range(5000))
    task = CharLM(text, seq_len=32, val_fraction=0.2, seed=3)
    x, y = task.train_batch(7, 4)
    assert x.shape == y.shape == (4, 32)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal((x - 97 + 1) % 26, y - 97)  # the alphabet: next letter follows
    again = CharLM(text, seq_len=32, val_fraction=0.2, seed=3).train_batch(7, 4)
    assert torch.equal(again[0], x)
    assert not torch.equal(task.train_batch(8, 4)[0], x)
    val = task.eval_batches(4, 3)
    assert len(val) == 3 and all(b[0].shape == (4, 32) for b in val)


def test_char_lm_rejects_text_too_short():
    with pytest.raises(ValueError, match="too short"):
        CharLM("short text", seq_len=64)


def test_mqar_targets_are_the_values_bound_to_the_queried_keys():
    task = MQAR(seq_len=64, vocab_size=64, n_pairs=6, seed=1)
    x, y = task.train_batch(0, 16)
    assert x.shape == y.shape == (16, 64)
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        context = row_x[:12]
        keys, values = context[0::2], context[1::2]
        assert len(set(keys)) == 6 and all(1 <= k < 32 for k in keys)
        assert all(32 <= v < 64 for v in values)
        binding = dict(zip(keys, values))
        queried = [(t, target) for t, target in enumerate(row_y) if target != IGNORE]
        assert len(queried) == 6
        assert sorted(row_x[t] for t, _ in queried) == sorted(keys)
        for t, target in queried:
            assert t >= 12 and binding[row_x[t]] == target
            assert row_x[t + 1] == target if t + 1 < 64 else True


def test_mqar_is_deterministic_and_validation_is_separate():
    a, b = MQAR(seed=0), MQAR(seed=0)
    assert torch.equal(a.train_batch(5, 8)[0], b.train_batch(5, 8)[0])
    val = a.eval_batches(8, 2)
    assert torch.equal(val[0][0], b.eval_batches(8, 2)[0][0])
    assert not torch.equal(val[0][0], a.train_batch(0, 8)[0])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(vocab_size=4), "vocab_size"),
        (dict(n_pairs=100, vocab_size=32), "n_pairs"),
        (dict(seq_len=10, n_pairs=4), "seq_len"),
    ],
)
def test_mqar_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MQAR(**kwargs)
