"""Documents into token arrays, a few at a time, with the smallest integer type that holds
the vocabulary (uint16 up to 65,536 tokens, else uint32: half the disk and memory of
int32 for every usual vocabulary)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from statewise.tasks.documents import Document
from statewise.tasks.tokenizer import ByteTokenizer, Tokenizer

BATCH_BYTES = 1 << 20  # text handed to the tokenizer at once (its threads share a batch)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def encoded_documents(
    documents: Iterable[Document], tokenizer: Tokenizer, batch_bytes: int = BATCH_BYTES
) -> Iterator[tuple[Document, np.ndarray]]:
    """Each document with its tokens (of ``token_dtype``), in order; documents are
    encoded in batches of about ``batch_bytes`` of text, so memory stays bounded by the
    batch (and the longest document), not the corpus."""
    dtype = token_dtype(tokenizer.vocab_size)
    if isinstance(tokenizer, ByteTokenizer):  # bytes: no tokenizer call at all
        for doc in documents:
            yield doc, np.frombuffer(doc.text.encode("utf-8"), np.uint8).astype(dtype)
        return
    batch: list[Document] = []
    size = 0

    def flush() -> Iterator[tuple[Document, np.ndarray]]:
        encode_batch = getattr(tokenizer, "encode_batch", None)
        texts = [d.text for d in batch]
        ids = encode_batch(texts) if encode_batch else [tokenizer.encode(t) for t in texts]
        for doc, doc_ids in zip(batch, ids):
            yield doc, np.asarray(doc_ids, dtype=dtype)

    for doc in documents:
        batch.append(doc)
        size += len(doc.text)
        if size >= batch_bytes:
            yield from flush()
            batch, size = [], 0
    if batch:
        yield from flush()


def encode_in_memory(
    documents: Iterable[Document], tokenizer: Tokenizer
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, offsets): all tokens concatenated, and the start of each non-empty
    document followed by the total (n_documents + 1 int64 values)."""
    parts = [ids for _, ids in encoded_documents(documents, tokenizer) if len(ids)]
    lengths = np.array([len(p) for p in parts], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    dtype = token_dtype(tokenizer.vocab_size)
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype)
    return tokens, offsets
