"""Text sources, the document split, packed windows with resets, truncated-BPTT streams,
and prepared (memory-mapped) directories against the in-memory path.

Expected values are computed independently of statewise.tasks.packing: documents are
encoded here with bytes, concatenated with plain Python lists, and the stream position
of every document start is a running sum of their lengths.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from statewise.errors import ConfigError, DataError
from statewise.tasks import DataConfig, build_task
from statewise.tasks.documents import iter_documents
from statewise.tasks.packing import held_out_documents
from statewise.tasks.prepared import open_prepared, prepare
from statewise.tasks.text import TextLM, builtin_corpus

DOCS = [f"document {i}: " + "abcdefghij"[i % 10] * (40 + 17 * i) + "\n" for i in range(12)]


def write_dir(root, docs=DOCS):
    root.mkdir()
    for i, text in enumerate(docs):
        sub = root / ("sub" if i % 3 == 0 else "") / f"f{i:02d}.txt"
        sub.parent.mkdir(exist_ok=True)
        sub.write_text(text)
    return root


def sorted_dir_docs(root):
    """The documents in the order the loader promises: sorted paths."""
    paths = sorted(p for p in root.rglob("*.txt"))
    return [p.read_text() for p in paths]


def reference(docs, val_fraction, seed):
    """(train stream, set of train document-start positions, val stream, val starts) built
    with lists, from the documents held out by the seed."""
    held = set(held_out_documents(len(docs), val_fraction, seed).tolist())
    out = {}
    for name, keep in (("train", lambda i: i not in held), ("val", lambda i: i in held)):
        stream, starts = [], set()
        for i, text in enumerate(docs):
            if keep(i):
                starts.add(len(stream))
                stream += list(text.encode())
        out[name] = (stream, starts)
    return out


def task_of(path, seq_len=8, val_fraction=0.25, seed=5, **extra) -> TextLM:
    config = DataConfig(
        task="char_lm", path=str(path), seq_len=seq_len, val_fraction=val_fraction, **extra
    )
    return build_task(config, seed)


# ------------------------------------------------------------------------ sources
def test_directory_glob_and_jsonl_give_the_same_documents(tmp_path):
    root = write_dir(tmp_path / "corpus")
    expected = sorted_dir_docs(root)
    (root / ".hidden.txt").write_text("never read")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("never read")
    (root / "blob.bin").write_bytes(b"\x00\x01binary")
    assert [d.text for d in iter_documents(root)] == expected
    glob_docs = [d.text for d in iter_documents(str(root / "**" / "*.txt"))]
    assert glob_docs == expected
    jsonl = tmp_path / "c.jsonl"
    lines = [json.dumps({"id": i, "body": t}) for i, t in enumerate(expected)]
    jsonl.write_text("\n".join(lines[:5]) + "\n\n" + "\n".join(lines[5:]) + "\n")
    assert [d.text for d in iter_documents(jsonl, text_field="body")] == expected
    a, b = task_of(root), task_of(jsonl, text_field="body")
    assert a.n_documents == b.n_documents == len(expected)
    for x, y in zip(a.train_batch(3, 4), b.train_batch(3, 4)):
        assert torch.equal(x, y)


@pytest.mark.parametrize(
    "line, words",
    [
        ("{not json", ["c.jsonl:2", "not a JSON object"]),
        ('{"other": "x"}', ["c.jsonl:2", "no field 'text'", "'other'"]),
        ('{"text": 3}', ["c.jsonl:2", "int"]),
        ("[1, 2]", ["c.jsonl:2", "list"]),
    ],
)
def test_a_bad_jsonl_line_names_file_and_line(tmp_path, line, words):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(DataError) as err:
        list(iter_documents(path))
    for word in words:
        assert word in str(err.value)


def test_missing_and_empty_sources_are_clear(tmp_path):
    with pytest.raises(DataError, match="not a readable file"):
        task_of(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="matches no file"):
        task_of(tmp_path / "*.md")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="without text files"):
        task_of(tmp_path / "empty")
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        task_of(tmp_path / "e.txt")


def test_builtin_corpus_is_one_document_per_standard_library_file():
    task = build_task(DataConfig(task="char_lm", seq_len=64), 0)
    assert task.n_documents > 100
    total = task.train_part.length + task.val_part.length
    assert total == sum(len(d.text.encode()) for d in iter_documents(""))
    assert len(builtin_corpus().encode()) == total + 2 * (task.n_documents - 1)  # "\n\n" joins


# ------------------------------------------------------------------------ split
def test_split_is_by_documents_disjoint_and_fixed_by_the_seed(tmp_path):
    root = write_dir(tmp_path / "corpus")
    docs = sorted_dir_docs(root)
    held = held_out_documents(len(docs), 0.25, seed=5)
    assert len(held) == 3 and np.array_equal(held, held_out_documents(len(docs), 0.25, 5))
    others = [tuple(held_out_documents(len(docs), 0.25, s)) for s in range(6)]
    assert len(set(others)) > 1  # the seed chooses
    task = task_of(root, seed=5)
    ref = reference(docs, 0.25, seed=5)
    for part, name in ((task.train_part, "train"), (task.val_part, "val")):
        ids, resets = part.gather(torch.arange(part.length))
        assert ids.tolist() == ref[name][0]
        assert set(torch.nonzero(resets).flatten().tolist()) == ref[name][1]
    # disjoint and complete: every document is in exactly one part
    assert task.train_part.length + task.val_part.length == sum(len(d.encode()) for d in docs)
    assert torch.equal(task.val_stream(), torch.tensor(ref["val"][0]))


def test_a_single_document_holds_out_its_last_tokens(tmp_path):
    text = "".join(chr(97 + i % 26) for i in range(1000))
    (tmp_path / "one.txt").write_text(text)
    task = task_of(tmp_path / "one.txt", val_fraction=0.1)
    assert task.val_part.length == 100
    assert task.val_stream().tolist() == list(text[900:].encode())
    x, _, resets = task.eval_batches(2, 1)[0]
    assert not resets.any()  # the held-out tail starts no document


# ------------------------------------------------------------------------ batches
def test_random_windows_carry_resets_exactly_at_document_starts(tmp_path):
    root = write_dir(tmp_path / "corpus")
    task = task_of(root, seq_len=16)
    stream, starts = reference(sorted_dir_docs(root), 0.25, seed=5)["train"]
    g = torch.Generator().manual_seed(5 * 1_000_003 + 9)  # tasks.base.step_generator(5, 9)
    positions = torch.randint(0, len(stream) - 16 - 1, (64,), generator=g).tolist()
    inputs, targets, resets = task.train_batch(9, 64)
    for row, p in enumerate(positions):
        assert inputs[row].tolist() == stream[p : p + 16]
        assert targets[row].tolist() == stream[p + 1 : p + 17]
        assert resets[row].tolist() == [p + t in starts for t in range(16)]
    assert resets.any()
    again = task_of(root, seq_len=16).train_batch(9, 64)
    assert all(torch.equal(a, b) for a, b in zip(again, (inputs, targets, resets)))


def test_stream_batches_read_consecutive_windows_of_each_rows_stream(tmp_path):
    root = write_dir(tmp_path / "corpus")
    seq_len, rows = 8, 3
    task = task_of(root, seq_len=seq_len)
    stream, starts = reference(sorted_dir_docs(root), 0.25, seed=5)["train"]
    per_row = len(stream) // rows
    n_windows = (per_row - 1) // seq_len
    assert task.n_windows(rows) == n_windows
    batches = [task.stream_batch(s, rows) for s in range(2 * n_windows + 1)]
    for r in range(rows):
        own = stream[r * per_row : (r + 1) * per_row]
        read = sum((b[0][r].tolist() for b in batches[:n_windows]), [])
        assert read == own[: n_windows * seq_len]  # consecutive windows concatenate
        for s, (_, targets, resets) in enumerate(batches):
            w = s % n_windows
            at = r * per_row + w * seq_len
            assert targets[r].tolist() == stream[at + 1 : at + seq_len + 1]
            expected = [at + t in starts for t in range(seq_len)]
            expected[0] = expected[0] or w == 0  # a new pass restarts the state
            assert resets[r].tolist() == expected
    # the next pass repeats the first
    assert all(torch.equal(a, b) for a, b in zip(batches[0], batches[n_windows]))
    with pytest.raises(DataError, match="too short"):
        task.stream_batch(0, len(stream))


def test_eval_windows_are_fixed_and_carry_resets(tmp_path):
    root = write_dir(tmp_path / "corpus")
    task = task_of(root, seq_len=8)
    stream, starts = reference(sorted_dir_docs(root), 0.25, seed=5)["val"]
    batches = task.eval_batches(4, 2)
    positions = torch.linspace(0, len(stream) - 9, 8).long().unique().tolist()
    got = torch.cat([b[0] for b in batches])
    resets = torch.cat([b[2] for b in batches])
    for row, p in enumerate(positions):
        assert got[row].tolist() == stream[p : p + 8]
        assert resets[row].tolist() == [p + t in starts for t in range(8)]


# ------------------------------------------------------------------------ prepared
def test_prepared_directory_gives_the_batches_of_the_in_memory_path(tmp_path):
    root = write_dir(tmp_path / "corpus")
    header = prepare(root, tmp_path / "prep", progress=False)
    docs = sorted_dir_docs(root)
    assert header["n_documents"] == len(docs) and header["dtype"] == "uint16"
    assert header["n_tokens"] == sum(len(d.encode()) for d in docs)
    prepared = open_prepared(tmp_path / "prep")
    assert isinstance(prepared.tokens, np.memmap)
    lengths = np.diff(prepared.offsets).tolist()
    assert lengths == [len(d.encode()) for d in docs]
    memory, mapped = task_of(root), task_of(tmp_path / "prep")
    assert isinstance(mapped.train_part.tokens, np.memmap)
    for step in range(3):
        for method in ("train_batch", "stream_batch"):
            a, b = getattr(memory, method)(step, 4), getattr(mapped, method)(step, 4)
            assert all(torch.equal(x, y) for x, y in zip(a, b))
    for a, b in zip(memory.eval_batches(4, 2), mapped.eval_batches(4, 2)):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_prepare_refuses_to_overwrite_and_leaves_nothing_on_failure(tmp_path):
    root = write_dir(tmp_path / "corpus")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists"):
        prepare(root, out, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n' * 3000 + "oops\n")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(DataError, match="bad.jsonl:3001"):
        prepare(bad, tmp_path / "new", progress=False)
    assert sorted(os.listdir(tmp_path)) == before  # no DIR, no hidden temporary sibling
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    prepare(root, empty, progress=False)  # an empty directory may be filled
    assert open_prepared(empty).header["n_documents"] == len(DOCS)


def test_a_damaged_prepared_directory_is_a_data_error(tmp_path):
    root = write_dir(tmp_path / "corpus")
    prepare(root, tmp_path / "prep", progress=False)
    tokens = tmp_path / "prep" / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:-2])
    with pytest.raises(DataError, match="tokens.bin has"):
        task_of(tmp_path / "prep")


def test_char_lm_refuses_a_subword_tokenizer(tmp_path):
    pytest.importorskip("tokenizers")
    from statewise.tasks.bpe import train_bpe

    root = write_dir(tmp_path / "corpus")
    train_bpe([str(root)], 300).save(tmp_path)
    with pytest.raises(ConfigError, match='data.task = "lm"'):
        task_of(root, tokenizer=str(tmp_path))
    lm = build_task(DataConfig(task="lm", path=str(root), seq_len=8, tokenizer=str(tmp_path)), 0)
    assert lm.vocab_size == 300 and lm.metric == "loss"
