"""The prefix state cache: a recurrent model's state after a prompt prefix, kept so that a
request starting with the same tokens skips their prefill.

A recurrent state summarises everything read so far in a fixed size, so caching a prefix
means keeping one state per prefix (a transformer would keep a KV cache growing with it).
The engine snapshots a request's state at each of its prefill chunk boundaries and at the
end of its prompt (there with the last position's logits, which the first generated token
is drawn from). Keys are the token prefix itself; a lookup tries the request's own chunk
boundaries from the longest down, so a hit always lands on a boundary the request would
have stopped at anyway (the same arithmetic as without the cache). Entries are evicted
least-recently-used to stay within ``max_bytes``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from statewise.ops.tree import State, tree_leaves, tree_unflatten


@dataclass
class CachedPrefix:
    """The state of one stream (batch 1) after ``length`` prompt tokens, and the logits
    (V,) at the last of them when the prefix is a whole prompt."""

    length: int
    state: State
    logits: torch.Tensor | None
    nbytes: int


def prefix_key(tokens: Sequence[int], length: int) -> bytes:
    """The cache key of the first ``length`` tokens."""
    return np.asarray(tokens[:length], dtype=np.int64).tobytes()


class PrefixCache:
    """States keyed by token prefix, least-recently-used out past ``max_bytes`` (0: off)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.entries: OrderedDict[bytes, CachedPrefix] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.hit_tokens = 0

    def lookup(
        self, tokens: Sequence[int], lengths: Sequence[int], need_logits_at: int
    ) -> CachedPrefix | None:
        """The longest cached prefix among ``lengths`` (a request's chunk boundaries); an
        entry at ``need_logits_at`` (the whole prompt) counts only if it holds logits.
        Counts a hit or a miss."""
        for length in sorted(lengths, reverse=True):
            entry = self.entries.get(prefix_key(tokens, length))
            if entry is None or (length == need_logits_at and entry.logits is None):
                continue
            self.entries.move_to_end(prefix_key(tokens, length))
            self.hits += 1
            self.hit_tokens += length
            return entry
        self.misses += 1
        return None

    def put(
        self, tokens: Sequence[int], length: int, state: State, logits: torch.Tensor | None
    ) -> None:
        """Keep a copy of ``state`` (batch 1) after the first ``length`` tokens."""
        if self.max_bytes <= 0:
            return
        key = prefix_key(tokens, length)
        if key in self.entries and (logits is None or self.entries[key].logits is not None):
            self.entries.move_to_end(key)
            return
        copied = [t.clone() for t in tree_leaves(state)]
        nbytes = sum(t.numel() * t.element_size() for t in copied) + len(key)
        if logits is not None:
            nbytes += logits.numel() * logits.element_size()
        if nbytes > self.max_bytes:
            return
        self._drop(key)
        kept_logits = None if logits is None else logits.clone()
        entry = CachedPrefix(length, tree_unflatten(state, copied), kept_logits, nbytes)
        self.entries[key] = entry
        self.bytes += nbytes
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self.entries)))

    def _drop(self, key: bytes) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.nbytes
