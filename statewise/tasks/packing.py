"""Token streams made of documents: the train / validation split by documents, and windows
read across document boundaries with ``resets`` where a document starts.

A stream is a virtual concatenation of segments of one token array (in memory or a
memory map): nothing is copied, a window gathers its positions from the segments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SPLIT_SEED_OFFSET = 7_919  # the split's draw: a generator of its own, apart from the steps'


@dataclass(frozen=True)
class Segment:
    start: int  # offset in the token array
    length: int
    starts_document: bool  # whether its first token is a document's first token


class TokenStream:
    """The concatenation of ``segments`` of ``tokens``; ``gather`` reads any positions."""

    def __init__(self, tokens: np.ndarray, segments: list[Segment]) -> None:
        segments = [s for s in segments if s.length > 0]
        self.tokens = tokens
        lengths = np.array([s.length for s in segments], dtype=np.int64)
        self._file_starts = np.array([s.start for s in segments], dtype=np.int64)
        self._stream_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self._starts_document = np.array([s.starts_document for s in segments], dtype=bool)
        self.length = int(lengths.sum())
        self.n_segments = len(segments)

    def gather(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids int64, resets bool) at ``positions`` (any shape, 0 <= p < length): resets is
        True where the token is the first token of a document."""
        pos = positions.numpy().astype(np.int64, copy=False)
        seg = np.searchsorted(self._stream_starts, pos, side="right") - 1
        within = pos - self._stream_starts[seg]
        ids = np.asarray(self.tokens[self._file_starts[seg] + within]).astype(np.int64)
        resets = (within == 0) & self._starts_document[seg]
        return torch.from_numpy(ids), torch.from_numpy(resets)


def split_documents(
    tokens: np.ndarray, offsets: np.ndarray, val_fraction: float, seed: int
) -> tuple[TokenStream, TokenStream]:
    """(train, validation) streams of the documents whose token ranges are
    ``offsets[i] : offsets[i + 1]``.

    With two or more documents, a seeded random choice of max(1, int(n * val_fraction))
    documents (at most n - 1) is held out, whole; both parts keep the documents' order.
    A single document cannot be split that way: its last int(len * val_fraction) tokens
    are held out instead (that tail starts no document, so it carries no reset).
    """
    n_docs = len(offsets) - 1
    if n_docs == 1:
        start, end = int(offsets[0]), int(offsets[1])
        n_val = int((end - start) * val_fraction)
        return (
            TokenStream(tokens, [Segment(start, end - start - n_val, True)]),
            TokenStream(tokens, [Segment(end - n_val, n_val, False)]),
        )
    held_out = held_out_documents(n_docs, val_fraction, seed)
    is_val = np.zeros(n_docs, dtype=bool)
    is_val[held_out] = True
    starts, ends = offsets[:-1], offsets[1:]

    def stream(mask: np.ndarray) -> TokenStream:
        return TokenStream(
            tokens,
            [Segment(int(s), int(e - s), True) for s, e in zip(starts[mask], ends[mask])],
        )

    return stream(~is_val), stream(is_val)


def held_out_documents(n_docs: int, val_fraction: float, seed: int) -> np.ndarray:
    """The sorted indices of the validation documents: a draw that depends only on
    (n_docs, val_fraction, seed)."""
    n_val = min(n_docs - 1, max(1, int(n_docs * val_fraction)))
    g = torch.Generator().manual_seed(seed * 1_000_003 + SPLIT_SEED_OFFSET)
    return np.sort(torch.randperm(n_docs, generator=g)[:n_val].numpy())
