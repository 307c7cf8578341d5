"""What bfloat16 and int8 weights cost and give for serving, per layer.

    python -m statewise.bench.quantize [--layers mingru mamba ...] [--steps 30]

For each layer: a language model of d_model 512, 4 layers and vocab 256 (bytes) is trained
for ``--steps`` AdamW steps on the text (batch 8 x 64 bytes, float32, one thread), then:

- the validation loss (mean next-byte cross-entropy, nats) on held-out text (the last
  ``--val-bytes`` of the file, never trained on) in float32, and its change with the
  weights in bfloat16 and in int8 (statewise.infer.quantize.quantize_for_serving);
- the mean KL divergence KL(float32 || quantized) of the next-byte distributions there;
- the decode step's time (``model.step``, median of repeats) at batch 1 and 32, and the
  speed-up over float32 (float32 time / quantized time).

A model trained for only tens of steps is far from converged; the loss change of a
trained model is the meaningful number (an untrained model's logits are nearly uniform).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from statewise.infer.quantize import quantize_for_serving
from statewise.models import ModelConfig, build_model

DEFAULT_TEXT = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"


def _batches(data: torch.Tensor, steps: int, batch: int, seq: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=g)
        rows = torch.stack([data[s : s + seq + 1] for s in starts.tolist()])
        yield rows[:, :-1], rows[:, 1:]


def train(layer: str, data: torch.Tensor, steps: int, seed: int = 0) -> torch.nn.Module:
    """A d_model 512, 4-layer byte LM of ``layer`` after ``steps`` AdamW steps (lr 2e-3)."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(layer=layer, d_model=512, n_layers=4, vocab_size=256))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    model.train()
    for x, y in _batches(data, steps, 8, 64, seed):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval()


@torch.no_grad()
def held_out_logits(model: torch.nn.Module, val: torch.Tensor, seq: int = 256) -> torch.Tensor:
    """Next-byte log-probabilities (N, 256) over ``val`` read in windows of ``seq`` bytes."""
    n = (len(val) - 1) // seq
    x = val[: n * seq].view(n, seq)
    return torch.log_softmax(model(x).float(), dim=-1).flatten(0, 1)


def loss_and_kl(ref: torch.Tensor, got: torch.Tensor, val: torch.Tensor, seq: int = 256):
    """(cross-entropy of ``got`` on the next bytes, mean KL(ref || got)), both in nats."""
    n = (len(val) - 1) // seq
    y = val[1 : n * seq + 1].view(n, seq).flatten()
    loss = float(F.nll_loss(got, y))
    kl = float((ref.exp() * (ref - got)).sum(-1).mean())
    return loss, kl


@torch.no_grad()
def step_time(model: torch.nn.Module, batch: int, repeats: int = 7, n: int = 20) -> float:
    """Median seconds of one ``model.step`` over ``batch`` sequences."""
    state = model.init_state(batch, dtype=torch.float32)
    ids = torch.randint(0, 256, (batch,))
    for _ in range(3):
        _, state = model.step(ids, state)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            _, state = model.step(ids, state)
        times.append((time.perf_counter() - start) / n)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m statewise.bench.quantize", description=__doc__)
    p.add_argument("--layers", nargs="+", default=["mingru", "lstm", "mamba", "retnet", "rwkv"])
    p.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    p.add_argument("--steps", type=int, default=30, help="training steps first (30)")
    p.add_argument("--val-bytes", type=int, default=20_000, help="held-out bytes (20000)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = torch.tensor(list(args.text.read_bytes()), dtype=torch.long)
    train_data, val = data[: -args.val_bytes], data[-args.val_bytes :]
    print(
        f"d_model 512, 4 layers, vocab 256; {args.steps} training steps (batch 8 x 64); "
        f"held-out {args.val_bytes} bytes of {args.text.name}; {args.threads} thread(s)"
    )
    print(
        "| layer | loss f32 | d loss bf16 | d loss int8 | KL bf16 | KL int8 "
        "| step b1 f32 ms | x bf16 | x int8 | step b32 f32 ms | x bf16 | x int8 |"
    )
    print("|---" * 12 + "|")
    for layer in args.layers:
        model = train(layer, train_data, args.steps)
        ref = held_out_logits(model, val)
        loss32, _ = loss_and_kl(ref, ref, val)
        row = [layer, f"{loss32:.4f}"]
        models = {d: quantize_for_serving(copy.deepcopy(model), d) for d in ("bfloat16", "int8")}
        quality = {d: loss_and_kl(ref, held_out_logits(m, val), val) for d, m in models.items()}
        row += [f"{quality[d][0] - loss32:+.4f}" for d in models]
        row += [f"{quality[d][1]:.2e}" for d in models]
        for batch in (1, 32):
            base = step_time(model, batch)
            row.append(f"{base * 1e3:.2f}")
            row += [f"{base / step_time(m, batch):.2f}" for m in models.values()]
        print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
