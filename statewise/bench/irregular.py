"""``python -m statewise.bench.irregular``: does a continuous-time layer use the time between
observations? A regression on irregularly sampled sines (issue 20's quality target for CfC).

Each sequence is x(t) = sin(w t + phi) + noise observed at T random times: the gaps are
uniform on [0.05, 0.6], so a step spans anything from a fiftieth to a third of a period.
The task is to read w (uniform on [1, 4]) from the T observations, at the last one. A model
blind to the gaps can only divide the phase it sees advance by the expected elapsed time,
whose spread over T = 48 gaps is about 7% (an MSE of about 0.03 on w); one that reads the
gaps can do better.

Models (d_model 32, one block, no MLP, same training) differ only in how they see time:

- ``cfc+dt``: CfC reading the gaps through the contract's ``dt``;
- ``cfc``: CfC without them (every step counts as 1);
- ``lstm``: an LSTM without them;
- ``lstm+gap``: an LSTM given each gap as a second input feature, the usual way to hand
  time to a discrete-time RNN (a stronger baseline than the target asks for);
- ``ltc+dt``: LTC reading the gaps through ``dt``.

Reported: the held-out mean squared error of w, and R^2 = 1 - MSE / Var(w). Deterministic
from ``--seed``; no network, no files.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

from statewise.models import ModelConfig
from statewise.models.block import Backbone

VARIANTS = ("cfc+dt", "cfc", "lstm", "lstm+gap", "ltc+dt")
W_RANGE = (1.0, 4.0)
GAP_RANGE = (0.05, 0.6)


def irregular_sines(n: int, seq_len: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(values (n, T), gaps (n, T), w (n,)): x(t_i) + N(0, 0.05^2) at times t_i = sum of the
    gaps up to i (the first gap is from t = 0), gaps uniform on GAP_RANGE."""
    low, high = GAP_RANGE
    gaps = low + (high - low) * torch.rand(n, seq_len, generator=generator)
    times = gaps.cumsum(dim=1)
    w = W_RANGE[0] + (W_RANGE[1] - W_RANGE[0]) * torch.rand(n, generator=generator)
    phase = 2 * math.pi * torch.rand(n, 1, generator=generator)
    values = torch.sin(w[:, None] * times + phase)
    values = values + 0.05 * torch.randn(n, seq_len, generator=generator)
    return values, gaps, w


class Regressor(nn.Module):
    """features -> Linear -> one block -> the last step's state -> w (standardised)."""

    def __init__(self, layer: str, features: int, d_model: int) -> None:
        super().__init__()
        self.inp = nn.Linear(features, d_model)
        config = ModelConfig(layer=layer, d_model=d_model, n_layers=1, mlp_ratio=0.0)
        self.backbone = Backbone(config)
        self.out = nn.Linear(d_model, 1)

    def forward(self, x: torch.Tensor, dt: torch.Tensor | None) -> torch.Tensor:
        h, _ = self.backbone(self.inp(x), dt=dt)
        return self.out(h[:, -1]).squeeze(-1)


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    layer = variant.split("+")[0]
    uses_dt, gap_feature = variant.endswith("+dt"), variant.endswith("+gap")
    torch.manual_seed(args.seed)
    model = Regressor(layer, 2 if gap_feature else 1, args.d_model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    test = irregular_sines(args.test_size, args.seq_len, torch.Generator().manual_seed(10**6))
    mean, std = sum(W_RANGE) / 2, (W_RANGE[1] - W_RANGE[0]) / math.sqrt(12)

    def inputs(values: torch.Tensor, gaps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = torch.stack([values, gaps], -1) if gap_feature else values.unsqueeze(-1)
        return x, (gaps if uses_dt else None)

    start = time.perf_counter()
    for step in range(args.steps):
        g = torch.Generator().manual_seed(args.seed * 100_003 + step)
        values, gaps, w = irregular_sines(args.batch_size, args.seq_len, g)
        x, dt = inputs(values, gaps)
        loss = ((model(x, dt) - (w - mean) / std) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        x, dt = inputs(test[0], test[1])
        mse = float(((model(x, dt) * std + mean - test[2]) ** 2).mean())
    return {
        "variant": variant,
        "mse": mse,
        "r2": 1 - mse / std**2,
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m statewise.bench.irregular", description=__doc__)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=48)
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--test-size", type=int, default=512)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"irregular sines: w in {W_RANGE}, gaps in {GAP_RANGE}, T {args.seq_len}; d_model "
        f"{args.d_model}, 1 block; {args.steps} AdamW steps of {args.batch_size}, lr {args.lr}; "
        f"{args.test_size} held-out sequences; seeds {args.seeds}"
    )
    print("| model | seed | test MSE of w | R^2 | train s |")
    print("|---|---|---|---|---|")
    for variant in args.variants:
        for seed in args.seeds:
            args.seed = seed
            r = run_variant(variant, args)
            row = f"| {variant} | {seed} | {r['mse']:.4f} | {r['r2']:.3f} | {r['seconds']:.0f} |"
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
