"""Float64 reference of causal softmax attention with a KV cache: a loop over queries.

Per sequence and token: q, k, v from the projections; q and k rotated at the token's position
p (RoPE's rotate-half pairs (i, i + n) over the first 2n features, angle p * theta^(-2i / r)
with r = floor(rotary_fraction * d)); the key/value appended to the list of the sequence's
keys; each query head h attends with softmax(q . k / sqrt(d)) over the last ``window`` keys
(all keys when global) of key/value head h // (H / H_kv); y = W_o [heads] + b_o.
The state's cache holds the last C keys/values right-aligned, empty slots zero.
"""

from __future__ import annotations

import math

import torch

from tests.reference.registry import reference


def _linear(proj, x: torch.Tensor) -> torch.Tensor:
    out = proj.weight @ x
    return out + proj.bias if proj.bias is not None else out


def _rotate(u: torch.Tensor, position: int, layer) -> torch.Tensor:
    """Rotate one head vector u (d,) at ``position``."""
    r = int(layer.head_dim * layer.rotary_fraction)
    n = len(range(0, r, 2))
    out = u.clone()
    for i in range(n):
        angle = position * layer.rope_theta ** (-(2 * i) / r)
        c, s = math.cos(angle), math.sin(angle)
        out[i] = u[i] * c - u[i + n] * s
        out[i + n] = u[i + n] * c + u[i] * s
    return out


@reference(
    "attention",
    n_heads=4,
    n_kv_heads=2,
    head_dim=4,
    window=4,
    rotary_fraction=0.5,
    qkv_bias=True,
    out_bias=True,
    chunk_size=3,
)
@reference(
    "attention",
    variant="global",
    n_heads=2,
    n_kv_heads=1,
    max_len=17,
    rotary_fraction=0.75,
    chunk_size=5,
)
def run(layer, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    batch, seq_len, _ = x.shape
    heads, kv_heads, d = layer.n_heads, layer.n_kv_heads, layer.head_dim
    group, cap, window = heads // kv_heads, layer.capacity, layer.window
    ys = torch.zeros(batch, seq_len, layer.d_model, dtype=x.dtype)
    final_k, final_v = torch.zeros_like(state["k"]), torch.zeros_like(state["v"])
    final_pos = state["pos"].clone()
    for b in range(batch):
        p = int(state["pos"][b])
        n = min(p, cap)
        keys = [state["k"][b, cap - n + j] for j in range(n)]  # oldest first, (H_kv, d) each
        values = [state["v"][b, cap - n + j] for j in range(n)]
        for t in range(seq_len):
            q = _linear(layer.q_proj, x[b, t]).view(heads, d)
            k = _linear(layer.k_proj, x[b, t]).view(kv_heads, d)
            v = _linear(layer.v_proj, x[b, t]).view(kv_heads, d)
            q = torch.stack([_rotate(q[h], p, layer) for h in range(heads)])
            k = torch.stack([_rotate(k[j], p, layer) for j in range(kv_heads)])
            keys.append(k)
            values.append(v)
            seen = range(max(0, len(keys) - window) if window else 0, len(keys))
            outs = []
            for h in range(heads):
                j = h // group
                scores = torch.stack([q[h] @ keys[s][j] / math.sqrt(d) for s in seen])
                weights = torch.exp(scores - scores.max())
                weights = weights / weights.sum()
                outs.append(sum(w * values[s][j] for w, s in zip(weights, seen)))
            ys[b, t] = _linear(layer.o_proj, torch.cat(outs))
            p += 1
        kept = min(cap, len(keys))
        for j in range(kept):
            final_k[b, cap - kept + j] = keys[len(keys) - kept + j]
            final_v[b, cap - kept + j] = values[len(values) - kept + j]
        final_pos[b] = p
    return ys, {"k": final_k, "v": final_v, "pos": final_pos}
