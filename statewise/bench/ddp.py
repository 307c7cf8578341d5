"""Training tokens/s of one process against ``torchrun`` data parallelism on this machine.

    python -m statewise.bench.ddp [--layers lstm,mingru,mamba,retnet] [--steps 30]

For each layer, the same run config (``examples/char_lm.toml``'s model and batch on the
built-in corpus, state passing off) is trained twice for ``--steps`` steps: by one
process with ``--threads`` threads, and by ``torchrun --standalone --nproc_per_node
--threads`` with one thread per process. Both see the same global batch, so they compute
the same update (docs/training.md); the table shows each setup's training tokens/s,
taken from the run's own metrics (the last logged ``tokens_per_s``: tokens over wall time
since the run started, the first steps' compilation and warm-up included), and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

LAYERS = ("lstm", "mingru", "mamba", "retnet")
CONFIG = """
[model]
layer = "{layer}"
d_model = 128
n_layers = 2

[data]
task = "char_lm"
seq_len = 128

[train]
steps = {steps}
batch_size = 32
warmup_steps = 5
log_every = {steps}
eval_every = {steps}
eval_batches = 1
checkpoint_every = {steps}
"""


def tokens_per_s(run_dir: Path) -> float:
    """The last logged training tokens/s of a finished run."""
    from statewise.train import checkpoint

    records = [m for m in checkpoint.read(run_dir, quiet=True).metrics() if "tokens_per_s" in m]
    return float(records[-1]["tokens_per_s"])


def train(config: Path, out: Path, processes: int, threads: int) -> float:
    """Train ``config`` into ``out`` with ``processes`` processes of ``threads`` threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads)}
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += [f"--nproc_per_node={processes}", "-m", "statewise"]
    else:
        command = [sys.executable, "-m", "statewise"]
    command += ["train", str(config), "--out", str(out), "--no-progress"]
    subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return tokens_per_s(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2, help="cores to use (processes)")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    rows = []
    print(
        f"{'layer':8s}  {'1 proc x ' + str(args.threads) + ' thr':>16s}  "
        f"{str(args.threads) + ' proc x 1 thr':>16s}  ratio",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for layer in args.layers.split(","):
            config = Path(tmp) / f"{layer}.toml"
            config.write_text(CONFIG.format(layer=layer, steps=args.steps))
            one = train(config, Path(tmp) / f"{layer}-one", 1, args.threads)
            ddp = train(config, Path(tmp) / f"{layer}-ddp", args.threads, 1)
            rows.append({"layer": layer, "one_process": one, "torchrun": ddp})
            print(f"{layer:8s}  {one:16,.0f}  {ddp:16,.0f}  x{ddp / one:.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
