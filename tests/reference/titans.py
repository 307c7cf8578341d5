"""Float64 reference of Titans' neural memory, a plain loop from the equations.

Per token and head: q = l2norm(W_Q x), k = l2norm(W_K x), v = W_V x (l2norm(u) =
u / sqrt(|u|^2 + 1e-6)); theta = max_lr sigmoid(.), eta = sigmoid(.), alpha = sigmoid(.) from
one projection with a bias. The weights M are the learned initial weights plus the state's
offsets. A real token at a position (real tokens seen) that is a multiple of C first keeps
the chunk-start weights M_c := M; then, with the loss l = |M_c(k) - v|^2,

    depth 1:  grad W = 2 (W_c k - v) k^T
    depth 2:  a = W1_c k, z = silu(a), e = 2 (W2_c z - v)
              grad W2 = e z^T,  grad W1 = ((W2_c^T e) * silu'(a)) k^T

    S = eta S - theta grad;  M = (1 - alpha) M + S;  o = M(q)

and y = W_o concat(RMSNorm(o_h) * w). A masked token changes nothing, the position
included.
"""

from __future__ import annotations

import torch

from tests.reference.formulas import activation, sigmoid
from tests.reference.registry import reference


def _grads(weights: list[torch.Tensor], k: torch.Tensor, v: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of |M(k) - v|^2 for one row and head (k, v vectors)."""
    if len(weights) == 1:
        (w,) = weights
        return [2.0 * torch.outer(w @ k - v, k)]
    w1, w2 = weights
    a = w1 @ k
    s = sigmoid(a)
    z = a * s
    e = 2.0 * (w2 @ z - v)
    return [torch.outer((w2.T @ e) * (s + a * s * (1.0 - s)), k), torch.outer(e, z)]


def _read(weights: list[torch.Tensor], q: torch.Tensor) -> torch.Tensor:
    if len(weights) == 1:
        return weights[0] @ q
    return weights[1] @ activation("silu", weights[0] @ q)


# small memories (gradcheck perturbs every state entry), max_lr 0.1 as the layer's default
@reference("titans", n_heads=4, depth=2, expansion=1.5, chunk_size=3)
@reference("titans", variant="linear", n_heads=2, depth=1, chunk_size=4, max_lr=0.5)
def run(layer, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    heads, d, depth, size = layer.n_heads, layer.head_dim, layer.depth, layer.chunk_size
    init = list(layer.memory_init)
    batch = x.shape[0]
    names = range(1, depth + 1)
    # per row and head: lists of weight matrices
    mem = [
        [[init[i - 1][h] + state[f"memory_{i}"][b, h] for i in names] for h in range(heads)]
        for b in range(batch)
    ]
    start = [
        [[init[i - 1][h] + state[f"start_{i}"][b, h] for i in names] for h in range(heads)]
        for b in range(batch)
    ]
    mom = [
        [[state[f"momentum_{i}"][b, h].clone() for i in names] for h in range(heads)]
        for b in range(batch)
    ]
    pos = [int(p) for p in state["pos"]]
    wr, br = layer.rate_proj.weight, layer.rate_proj.bias
    ys = []
    for t in range(x.shape[1]):
        rows = []
        for b in range(batch):
            x_t = x[b, t]
            outs = []
            for h in range(heads):
                part = slice(h * d, (h + 1) * d)
                q = layer.q_proj.weight[part] @ x_t
                k = layer.k_proj.weight[part] @ x_t
                v = layer.v_proj.weight[part] @ x_t
                q = q / torch.sqrt((q**2).sum() + 1e-6)
                k = k / torch.sqrt((k**2).sum() + 1e-6)
                theta = layer.max_lr * sigmoid(wr[h] @ x_t + br[h])
                eta = sigmoid(wr[heads + h] @ x_t + br[heads + h])
                alpha = sigmoid(wr[2 * heads + h] @ x_t + br[2 * heads + h])
                if pos[b] % size == 0:
                    start[b][h] = list(mem[b][h])
                grads = _grads(start[b][h], k, v)
                for i in range(depth):
                    mom[b][h][i] = eta * mom[b][h][i] - theta * grads[i]
                    mem[b][h][i] = (1.0 - alpha) * mem[b][h][i] + mom[b][h][i]
                o = _read(mem[b][h], q)
                rms = torch.sqrt((o**2).mean() + layer.o_norm.eps)
                outs.append(o / rms * layer.o_norm.weight)
            rows.append(layer.o_proj.weight @ torch.cat(outs))
            pos[b] += 1
        ys.append(torch.stack(rows))
    final = {}
    for i in names:
        final[f"memory_{i}"] = torch.stack(
            [
                torch.stack([mem[b][h][i - 1] - init[i - 1][h] for h in range(heads)])
                for b in range(batch)
            ]
        )
        final[f"start_{i}"] = torch.stack(
            [
                torch.stack([start[b][h][i - 1] - init[i - 1][h] for h in range(heads)])
                for b in range(batch)
            ]
        )
        final[f"momentum_{i}"] = torch.stack(
            [torch.stack([mom[b][h][i - 1] for h in range(heads)]) for b in range(batch)]
        )
    final["pos"] = torch.tensor(pos, dtype=torch.long)
    return torch.stack(ys, dim=1), final
