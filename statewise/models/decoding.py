"""Greedy and beam-search decoding of a :class:`~statewise.models.seq2seq.Seq2SeqModel`, the
decoder in step mode (O(1) work per token for a recurrent decoder).

Beam search keeps the ``beam`` best partial hypotheses per source by total log-probability.
A hypothesis that emits EOS is finished, with the score

    score(y) = log p(y | x) / |y|^length_penalty

(|y| counts EOS; length_penalty 0 is the raw log-probability, which favours short outputs,
1 the mean log-probability per token). A source is done once it holds ``beam`` finished
hypotheses (later ones are not considered, so a source's result does not depend on the
other sources in the batch); a source not done after ``max_len`` tokens also counts its open
hypotheses, scored as if they ended there. The best hypothesis is returned, with its
attention weights per output token.
"""

from __future__ import annotations

import math

import torch

from statewise.errors import ArgumentError
from statewise.models.seq2seq import Seq2SeqModel
from statewise.ops.tree import tree_map
from statewise.tasks.transduction import BOS, EOS

Decoded = tuple[list[list[int]], list[torch.Tensor | None]]


def _check(max_len: int, beam: int = 1) -> None:
    for name, value in (("max_len", max_len), ("beam", beam)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ArgumentError(f"{name} must be a positive int, got {value!r}")


@torch.no_grad()
def greedy_decode(
    model: Seq2SeqModel,
    source: torch.Tensor,
    source_mask: torch.Tensor | None = None,
    max_len: int = 64,
) -> Decoded:
    """The most probable token at each step until EOS or ``max_len`` tokens. Returns the
    token lists (EOS excluded) and, with attention, each output's weights (U_i, S_i)."""
    _check(max_len)
    enc = model.encode(source, source_mask)
    state, batch = enc.state, source.shape[0]
    token = torch.full((batch,), BOS, dtype=torch.long, device=source.device)
    outputs, weights, done = [], [], torch.zeros(batch, dtype=torch.bool)
    for _ in range(max_len):
        logp, state, w = model.step(token, state, enc)
        token = logp.argmax(-1)
        outputs.append(token)
        weights.append(w)
        done |= token == EOS
        if done.all():
            break
    tokens = torch.stack(outputs, 1)
    align = None if weights[0] is None else torch.stack(weights, 1)
    return _trim(tokens, align, enc.mask)


def _trim(tokens: torch.Tensor, align: torch.Tensor | None, mask: torch.Tensor) -> Decoded:
    """Cut each row at its first EOS; the alignments to (U_i + 1 with EOS, S_i)."""
    seqs, aligns = [], []
    for row in range(tokens.shape[0]):
        ids = tokens[row].tolist()
        n = ids.index(EOS) if EOS in ids else len(ids)
        seqs.append(ids[:n])
        n_src = int(mask[row].sum())
        aligns.append(None if align is None else align[row, : n + 1, :n_src].clone())
    return seqs, aligns


@torch.no_grad()
def beam_search(
    model: Seq2SeqModel,
    source: torch.Tensor,
    source_mask: torch.Tensor | None = None,
    beam: int = 4,
    max_len: int = 64,
    length_penalty: float = 1.0,
) -> Decoded:
    """Beam search (module docstring) -> token lists (EOS excluded) and alignments."""
    _check(max_len, beam)
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, int | float):
        raise ArgumentError(f"length_penalty must be a number, got {length_penalty!r}")
    if not math.isfinite(length_penalty):
        raise ArgumentError(f"length_penalty must be finite, got {length_penalty!r}")
    enc = model.encode(source, source_mask)
    batch, n_src = source.shape[0], enc.memory.shape[1]
    rows = torch.arange(batch, device=source.device).repeat_interleave(beam)
    state = tree_map(lambda t: t[rows], enc.state)
    enc_k = enc.select(rows)
    scores = torch.full((batch, beam), -math.inf, device=source.device)
    scores[:, 0] = 0.0  # the first step expands one hypothesis per source
    tokens = torch.full((batch, beam, 0), BOS, dtype=torch.long, device=source.device)
    align = torch.zeros(batch, beam, 0, n_src, device=source.device)
    last = torch.full((batch * beam,), BOS, dtype=torch.long, device=source.device)
    finished: list[list[tuple[float, list[int], torch.Tensor | None]]] = [[] for _ in range(batch)]

    def finish(b: int, seq: list[int], total: float, a: torch.Tensor | None) -> None:
        """Record a hypothesis of source b; seq without EOS, a its weights with EOS's."""
        length = len(seq) + 1
        kept = None if a is None else a[:, : int(enc.mask[b].sum())].clone()
        finished[b].append((total / length**length_penalty, seq, kept))

    done = [False] * batch
    rows_b = torch.arange(batch, device=source.device).unsqueeze(1)
    for _ in range(max_len):
        logp, state, w = model.step(last, state, enc_k)
        vocab = logp.shape[-1]
        total = (scores.unsqueeze(-1) + logp.view(batch, beam, vocab)).view(batch, -1)
        best, index = total.topk(min(2 * beam, total.shape[1]), dim=-1)
        origin, token = index // vocab, index % vocab
        new_scores = torch.full_like(scores, -math.inf)
        chosen = torch.zeros(batch, beam, dtype=torch.long, device=source.device)
        new_tokens = torch.full((batch, beam), EOS, dtype=torch.long, device=source.device)
        step_w = None if w is None else w.view(batch, beam, 1, n_src)
        for b in range(batch):
            open_k = 0
            for score, k, tok in zip(best[b].tolist(), origin[b].tolist(), token[b].tolist()):
                if done[b] or score == -math.inf or open_k == beam:
                    break
                if tok == EOS:
                    a = None if step_w is None else torch.cat([align[b, k], step_w[b, k]])
                    finish(b, tokens[b, k].tolist(), score, a)
                    continue
                new_scores[b, open_k], chosen[b, open_k], new_tokens[b, open_k] = score, k, tok
                open_k += 1
            done[b] = done[b] or len(finished[b]) >= beam
        tokens = torch.cat([tokens[rows_b, chosen], new_tokens.unsqueeze(-1)], -1)
        if step_w is not None:
            align = torch.cat([align[rows_b, chosen], step_w[rows_b, chosen]], 2)
        scores = torch.where(torch.tensor(done).unsqueeze(1), -math.inf, new_scores)
        flat = (rows_b * beam + chosen).view(-1)
        state = tree_map(lambda s, flat=flat: s[flat], state)
        last = new_tokens.view(-1)
        if all(done):
            break
    out_tokens, out_align = [], []
    for b in range(batch):
        if not done[b]:  # max_len reached: the open hypotheses count as they stand
            for k in range(beam):
                if scores[b, k] > -math.inf:
                    a = None if model.attention is None else align[b, k]
                    seq = tokens[b, k].tolist()
                    finished[b].append((scores[b, k].item() / len(seq) ** length_penalty, seq, a))
        _, seq, a = max(finished[b], key=lambda c: c[0])
        out_tokens.append(seq)
        out_align.append(a if a is None else a[:, : int(enc.mask[b].sum())])
    return out_tokens, out_align
