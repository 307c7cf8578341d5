"""``statewise bench fused``: the fused decode step (statewise.infer.fused) against the
PyTorch step and against the time to read the weights.

For each layer, a randomly initialised language model (``--d-model``, ``--n-layers``,
vocab 256, eval mode) and, with ``--threads`` threads for torch and numba alike:

- **Block step at batch 1.** One decode step of the whole model is run, timing each
  block's call on its own (so every block's weights come from wherever the previous
  blocks left the caches, as in serving: a 4-block model at d_model 512 is larger than
  this machine's 32 MiB L3). Per block, the median over the repeats, fused and PyTorch
  (``Block.step``); the read time is the block's parameter bytes over the machine's
  memory bandwidth measured in the same run (statewise.bench.machine). Target: the fused
  block step within 2x of the read time.
- **Model step by batch size.** The whole ``step`` (embedding, blocks, head), fused and
  PyTorch, at batch 1, 2, 4, ... ``--max-batch``, and the crossover the engine's
  ``decode="auto"`` would choose from these numbers (statewise.infer.decode_path).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np
import torch

from statewise.bench.machine import measure_bandwidth, median_seconds

DEFAULT_LAYERS = ("mingru", "lstm", "gru", "rglru", "mamba", "mamba2", "rwkv", "mlstm")
VOCAB = 256
TARGET_RATIO = 2.0


@dataclass
class Options:
    layers: tuple[str, ...] = DEFAULT_LAYERS
    d_model: int = 512
    n_layers: int = 4
    threads: int = 1
    max_batch: int = 32
    repeats: int = 15

    @classmethod
    def quick(cls) -> Options:
        """The tests' run: two layers, d_model 64, 2 blocks, batches up to 4."""
        return cls(layers=("mingru", "lstm"), d_model=64, n_layers=2, max_batch=4, repeats=3)


@dataclass
class LayerResult:
    layer: str
    block_bytes: float
    read_us: float
    fused_block_us: float
    torch_block_us: float
    ratio: float  # fused block step / read time
    by_batch: dict[int, tuple[float, float]] = field(default_factory=dict)  # ms fused, torch
    crossover: int = 0


def run_fused_bench(opts: Options) -> dict:
    """Every number of the bench (see the module doc) as a dict."""
    from statewise.infer.fused import FusedDecoder
    from statewise.models import ModelConfig, build_model

    previous = torch.get_num_threads()
    torch.set_num_threads(opts.threads)
    try:
        numel = 2**22 if opts.d_model < 256 else 64 * 2**20  # a small model: a quick probe
        bandwidth = max(measure_bandwidth(numel=numel).values())
        results = []
        for layer in opts.layers:
            torch.manual_seed(0)
            config = ModelConfig(
                layer=layer, d_model=opts.d_model, n_layers=opts.n_layers, vocab_size=VOCAB
            )
            model = build_model(config).eval()
            results.append(_measure(layer, model, FusedDecoder(model), bandwidth, opts))
    finally:
        torch.set_num_threads(previous)
    return {
        "options": asdict(opts),
        "bandwidth_gbs": bandwidth,
        "results": [asdict(r) for r in results],
    }


@torch.no_grad()
def _measure(layer: str, model, fused, bandwidth: float, opts: Options) -> LayerResult:
    blocks = model.backbone.blocks
    block_bytes = statistics.mean(
        sum(p.numel() * p.element_size() for p in b.parameters()) for b in blocks
    )
    read_us = block_bytes / (bandwidth * 1e9) * 1e6
    fused_us, torch_us = _block_times(model, fused, opts.repeats)
    result = LayerResult(layer, block_bytes, read_us, fused_us, torch_us, fused_us / read_us)
    rows = 1
    while rows <= opts.max_batch:
        ids = torch.zeros(rows, dtype=torch.long)
        state = model.init_state(rows)
        fused_ms = median_seconds(partial(fused.step, ids, state, in_place=True), opts.repeats)
        torch_ms = median_seconds(partial(model.step, ids, state), opts.repeats)
        result.by_batch[rows] = (fused_ms * 1e3, torch_ms * 1e3)
        if fused_ms <= torch_ms and result.crossover == rows // 2:
            result.crossover = rows
        rows *= 2
    return result


def _block_times(model, fused, repeats: int) -> tuple[float, float]:
    """Median µs of one block's step at batch 1 (mean over the blocks), fused and PyTorch,
    each block timed inside a whole-model step."""
    fused_times, torch_times = [], []
    for _ in range(repeats + 1):  # the first pass warms up (numba's compile or cache load)
        state = model.init_state(1)
        x_np = model.embed.weight[:1].detach().numpy().copy()
        per_block = []
        with fused.running():
            for block, s in zip(fused.blocks, state):
                start = time.perf_counter()
                block(x_np, s)
                per_block.append(time.perf_counter() - start)
        fused_times.append(np.mean(per_block))
        x_t = model.embed.weight[:1].clone()
        per_block = []
        for block, s in zip(model.backbone.blocks, state):
            start = time.perf_counter()
            x_t, _ = block.step(x_t, s)
            per_block.append(time.perf_counter() - start)
        torch_times.append(np.mean(per_block))
    return statistics.median(fused_times[1:]) * 1e6, statistics.median(torch_times[1:]) * 1e6


def format_report(result: dict) -> str:
    o = result["options"]
    lines = [
        f"statewise bench fused: d_model {o['d_model']}, {o['n_layers']} layers, vocab {VOCAB}, "
        f"float32, random weights; {o['threads']} thread(s) for torch and numba; "
        f"memory bandwidth {result['bandwidth_gbs']:.1f} GB/s",
        "",
        "block step at batch 1, µs (read: the block's parameter bytes / bandwidth)",
        f"{'layer':>8} {'block MB':>9} {'read':>7} {'fused':>7} {'fused/read':>10} "
        f"{'torch':>7} {'torch/fused':>11}",
    ]
    for r in result["results"]:
        lines.append(
            f"{r['layer']:>8} {r['block_bytes'] / 1e6:>9.2f} {r['read_us']:>7.0f} "
            f"{r['fused_block_us']:>7.0f} {r['ratio']:>10.2f} {r['torch_block_us']:>7.0f} "
            f"{r['torch_block_us'] / r['fused_block_us']:>11.2f}"
        )
    sizes = sorted({int(b) for r in result["results"] for b in r["by_batch"]})
    lines += ["", "model step by batch size, ms: fused / PyTorch, and the crossover"]
    batches = " ".join(f"{'B' + str(b):>13}" for b in sizes)
    lines.append(f"{'layer':>8} {batches}  fused up to")
    for r in result["results"]:
        cells = [
            f"{f:>6.2f}/{t:<6.2f}" for f, t in (r["by_batch"][b] for b in sorted(r["by_batch"]))
        ]
        lines.append(f"{r['layer']:>8} " + " ".join(cells) + f"  {r['crossover']}")
    lines += ["", "targets"]
    for r in result["results"]:
        verdict = "PASS" if r["ratio"] <= TARGET_RATIO else "MISS"
        lines.append(
            f"  {verdict}  {r['layer']}: fused block step at batch 1 / parameter read time "
            f"{r['ratio']:.2f}x (target <= {TARGET_RATIO:g}x)"
        )
    return "\n".join(lines)
