"""``python -m statewise.bench.seq2seq``: the encoder-decoder quality runs of issue 22.

Each run fits :class:`statewise.Seq2Seq` on pairs from :mod:`statewise.tasks.transduction`
(seed 0) and reports exact match and character error rate on fresh test pairs (seed 1; for
"date", test pairs use only days never drawn in training), greedy decoding unless
``--beam`` > 1. Runs:

    reverse@N        reversal, trained on 1..N digits, tested on N digits
    sort@N, add@N    likewise (add: N digits per operand)
    date             date normalisation (10 human formats -> ISO 8601)

with ``--attention bahdanau | luong | none``. A JSON line per run goes to ``--json`` when
given. Deterministic from the seeds; no network, no files read.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from statewise.estimators.seq2seq import Seq2Seq
from statewise.tasks.transduction import TASKS, make_pairs


def parse_run(text: str) -> tuple[str, int | None]:
    """ "reverse@30" -> ("reverse", 30); "date" -> ("date", None)."""
    task, _, n = text.partition("@")
    if task not in TASKS or (task != "date") != bool(n) or (n and not n.isdigit()):
        raise argparse.ArgumentTypeError(f"a run is TASK@DIGITS or date, got {text!r}")
    return task, int(n) if n else None


def run(task: str, n: int | None, args: argparse.Namespace) -> dict:
    lengths = None if n is None else range(1, n + 1)
    train = make_pairs(task, args.train_pairs, lengths, seed=0)
    test = make_pairs(task, args.test_pairs, None if n is None else [n], seed=1, split="test")
    attention = None if args.attention == "none" else args.attention
    model = Seq2Seq(
        args.layer,
        attention=attention,
        d_model=args.d_model,
        encoder_layers=args.layers,
        decoder_layers=args.layers,
        batch_size=args.batch_size,
        lr=args.lr,
        mlp_ratio=0,
    )
    start = time.perf_counter()
    model.fit(*zip(*train), max_steps=args.steps, budget_s=args.budget_s, progress=args.progress)
    seconds = time.perf_counter() - start
    scores = model.evaluate(*zip(*test), beam=args.beam)
    name = task if n is None else f"{task}@{n}"
    return {
        "run": name,
        "layer": args.layer,
        "attention": args.attention,
        "d_model": args.d_model,
        "layers": args.layers,
        "steps": model.history[-1]["step"],
        "fit_s": round(seconds, 1),
        "beam": args.beam,
        **{k: round(v, 4) for k, v in scores.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m statewise.bench.seq2seq", description=__doc__)
    p.add_argument("runs", nargs="+", type=parse_run, help="e.g. reverse@30 date")
    p.add_argument("--layer", default="lstm")
    p.add_argument("--attention", default="bahdanau", choices=["bahdanau", "luong", "none"])
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--budget-s", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--train-pairs", type=int, default=50_000)
    p.add_argument("--test-pairs", type=int, default=1000)
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--json", default=None, help="append one JSON line per run to this file")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for task, n in args.runs:
        result = run(task, n, args)
        print(" ".join(f"{k}={v}" for k, v in result.items()), flush=True)
        if args.json:
            with open(args.json, "a", encoding="utf-8") as f:
                f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
