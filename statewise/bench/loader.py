"""The text loader's speed: tokens/s of ``train_batch`` (random windows) and
``stream_batch`` (truncated-BPTT windows) over a prepared directory or any data.path, to
compare with a training step's tokens/s (the loader must never be the bottleneck).

    python -m statewise.bench.loader DIR [--batch-size 32] [--seq-len 128] [--steps 200]
"""

from __future__ import annotations

import argparse
import time

from statewise.errors import ArgumentError
from statewise.tasks.text import TextLM, build_text_task


def loader_speed(
    path: str, batch_size: int = 32, seq_len: int = 128, steps: int = 200, seed: int = 0
) -> dict[str, float]:
    """Input tokens per second produced by each batching method of the text task over
    ``path`` (batch_size x seq_len per batch, ``steps`` batches, after one untimed batch),
    and the seconds taken to open the data."""
    if min(batch_size, seq_len, steps) < 1:
        raise ArgumentError("batch_size, seq_len and steps must be >= 1")
    started = time.perf_counter()
    task: TextLM = build_text_task("lm", path, seq_len, 0.1, seed)
    result = {"open_s": time.perf_counter() - started, "tokens": task.train_part.length}
    for name in ("train_batch", "stream_batch"):
        batches = getattr(task, name)
        batches(0, batch_size)
        started = time.perf_counter()
        for step in range(1, steps + 1):
            batches(step, batch_size)
        seconds = time.perf_counter() - started
        result[f"{name}_tokens_per_s"] = steps * batch_size * seq_len / seconds
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m statewise.bench.loader")
    parser.add_argument("path", help="a prepared directory (or any data.path; '' is built-in)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)
    r = loader_speed(args.path, args.batch_size, args.seq_len, args.steps)
    print(
        f"{args.path or 'built-in corpus'}: {r['tokens']:,} training tokens, opened in "
        f"{r['open_s']:.2f} s; batch {args.batch_size} x {args.seq_len}: train_batch "
        f"{r['train_batch_tokens_per_s']:,.0f} tokens/s, stream_batch "
        f"{r['stream_batch_tokens_per_s']:,.0f} tokens/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
