"""Float64 reference of the Block-Recurrent Transformer layer: a loop over tokens.

Per sequence: the state vectors C = C_0 + c and the tokens of the current block so far
(the first ``pos`` buffered inputs). Per token x: it joins the block; its output is
W_o [ attn(q, keys of the block so far) ; attn(r, keys of LN(C)) ]; when the block has W
tokens, every state vector i is updated by z_i = W_so [ attn(p_i, keys of LN(C)) ;
attn(u_i, keys of the block) ] and C <- sigma(b_f) C + (1 - sigma(b_f)) z, and the block
empties. attn is a softmax over the keys of each head, scaled by 1 / sqrt(d), written out
one score at a time.
"""

from __future__ import annotations

import math

import torch

from tests.reference.registry import reference


def _layer_norm(norm, u: torch.Tensor) -> torch.Tensor:
    mean = u.mean()
    var = ((u - mean) ** 2).mean()
    return (u - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _split(proj, u: torch.Tensor, heads: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = proj.weight @ u
    return out[: heads * d].view(heads, d), out[heads * d :].view(heads, d)


def _attn(q: torch.Tensor, keys: list, values: list) -> torch.Tensor:
    """One query q (H, d) over lists of keys/values (H, d): the heads concatenated."""
    heads, d = q.shape
    outs = []
    for h in range(heads):
        scores = torch.stack([q[h] @ k[h] / math.sqrt(d) for k in keys])
        weights = torch.exp(scores - scores.max())
        weights = weights / weights.sum()
        outs.append(sum(wt * val[h] for wt, val in zip(weights, values)))
    return torch.cat(outs)


def random_state(layer, batch: int, g: torch.Generator) -> dict:
    """Random state offsets and buffers, a random place inside the block, later slots zero."""
    w, dim = layer.block_size, layer.d_model
    pos = torch.randint(0, w, (batch,), generator=g)
    x = 0.5 * torch.randn(batch, w - 1, dim, generator=g, dtype=torch.float64)
    x = torch.where((torch.arange(w - 1)[None, :] < pos[:, None])[..., None], x, 0)
    c = 0.5 * torch.randn(batch, layer.n_state, dim, generator=g, dtype=torch.float64)
    return {"c": c, "x": x, "pos": pos}


@reference(
    "block_recurrent",
    random_state=random_state,
    n_heads=2,
    n_state=2,
    block_size=3,
)
def run(layer, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    batch, seq_len, dim = x.shape
    heads, d, w = layer.n_heads, layer.head_dim, layer.block_size
    keep = torch.sigmoid(layer.forget_bias)
    ys = torch.zeros(batch, seq_len, dim, dtype=x.dtype)
    final_c = torch.zeros_like(state["c"])
    final_x = torch.zeros_like(state["x"])
    final_pos = state["pos"].clone()
    for b in range(batch):
        states = [layer.state_init[i] + state["c"][b, i] for i in range(layer.n_state)]
        block = [state["x"][b, j] for j in range(int(state["pos"][b]))]
        kv = [_split(layer.kv_proj, u, heads, d) for u in block]
        normed = [_layer_norm(layer.state_norm, c) for c in states]
        skv = [_split(layer.state_kv_proj, u, heads, d) for u in normed]
        for t in range(seq_len):
            block.append(x[b, t])
            kv.append(_split(layer.kv_proj, x[b, t], heads, d))
            q, r = _split(layer.q_proj, x[b, t], heads, d)
            own = _attn(q, [k for k, _ in kv], [v for _, v in kv])
            cross = _attn(r, [k for k, _ in skv], [v for _, v in skv])
            ys[b, t] = layer.o_proj.weight @ torch.cat([own, cross])
            if len(block) == w:
                new = []
                for i in range(layer.n_state):
                    p, u = _split(layer.state_q_proj, normed[i], heads, d)
                    own = _attn(p, [k for k, _ in skv], [v for _, v in skv])
                    cross = _attn(u, [k for k, _ in kv], [v for _, v in kv])
                    z = layer.state_o_proj.weight @ torch.cat([own, cross])
                    new.append(keep * states[i] + (1 - keep) * z)
                states, block, kv = new, [], []
                normed = [_layer_norm(layer.state_norm, c) for c in states]
                skv = [_split(layer.state_kv_proj, u, heads, d) for u in normed]
        for i in range(layer.n_state):
            final_c[b, i] = states[i] - layer.state_init[i]
        for j, u in enumerate(block):
            final_x[b, j] = u
        final_pos[b] = len(block)
    return ys, {"c": final_c, "x": final_x, "pos": final_pos}
