"""ParaGRU: newton vs loop (nn.GRU as the fused-loop reference); ratios in one process.

Every round runs each variant once (interleaved); the table shows the best round of each,
timed as this process's CPU time (time.process_time): on a shared machine, with one
thread, the CPU time is the work done, whatever the scheduler does.

Usage: NUMBA_NUM_THREADS=1 nice -n 5 python benchmarks/newton.py THREADS [D_MODEL]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch

import statewise.layers as L
from statewise import kernels
from statewise.ops.newton import newton_solve

COLUMNS = (
    "B", "T", "iters random", "iters trained-like", "loop fwd ms",
    "newton/loop fwd, torch", "newton/loop fwd, numba", "loop fwd+bwd ms",
    "newton/loop fwd+bwd, torch", "newton/loop fwd+bwd, numba",
    "nn.GRU/loop fwd", "nn.GRU/loop fwd+bwd",
)  # fmt: skip


def make(d_model: int, init: str) -> L.SequenceMixer:
    torch.manual_seed(0)
    layer = L.get("paragru", d_model=d_model)
    if init == "trained-like":
        with torch.no_grad():
            layer.in_proj.bias[:d_model].uniform_(-4.0, -1.0)  # slow update gates
            layer.recurrent.uniform_(-2.0, 2.0)
    return layer


def iterations(layer: L.SequenceMixer, x: torch.Tensor) -> str:
    """Newton iterations to the layer's default tolerance (and whether it fell back)."""
    with torch.no_grad():
        g = layer.in_proj(x).unflatten(-1, (3, layer.d_model))
        _, rep = newton_solve(
            layer.cell,
            layer.init_state(x.shape[0]),
            (g,),
            layer._cell_params(),
            None,
            layer.cell_jacobian,
            layer.newton,
        )
    return f"{rep.iterations}{' fallback' if rep.fallback else ''}"


def forward(layer: L.SequenceMixer, mode: str, x: torch.Tensor) -> None:
    layer.mode = mode
    with torch.no_grad():
        layer(x)


def forward_backward(layer: L.SequenceMixer, mode: str, x: torch.Tensor) -> None:
    layer.mode = mode
    y, _ = layer(x.clone().requires_grad_(True))
    y.square().sum().backward()


def under(backend: str, fn: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        with kernels.use(backend):
            fn()

    return run


def variants(d_model: int, x: torch.Tensor) -> dict[str, Callable[[], None]]:
    layer = make(d_model, "random")
    gru = torch.nn.GRU(d_model, d_model, batch_first=True)

    def gru_forward() -> None:
        with torch.no_grad():
            gru(x)

    def gru_forward_backward() -> None:
        gru(x.clone().requires_grad_(True))[0].square().sum().backward()

    out = {
        "loop_f": lambda: forward(layer, "loop", x),
        "loop_fb": lambda: forward_backward(layer, "loop", x),
        "gru_f": gru_forward,
        "gru_fb": gru_forward_backward,
    }
    for backend in kernels.available():
        out[f"newton_f_{backend}"] = under(backend, lambda: forward(layer, "newton", x))
        out[f"newton_fb_{backend}"] = under(backend, lambda: forward_backward(layer, "newton", x))
    return out


def best_cpu_seconds(runs: dict[str, Callable[[], None]], rounds: int = 1) -> dict[str, float]:
    best = {k: float("inf") for k in runs}
    for _ in range(rounds + 1):  # the first round also warms up (numba compiles)
        for k, fn in runs.items():
            start = time.process_time()
            fn()
            best[k] = min(best[k], time.process_time() - start)
    return best


def main(threads: int = 1, d_model: int = 256) -> None:
    torch.set_num_threads(threads)
    sizes = [(4, 256), (16, 256), (4, 1024), (16, 1024), (4, 4096)]
    if d_model != 256:
        sizes = [(1, 1024), (1, 4096), (4, 1024)]
    print(f"d_model {d_model}, torch {torch.__version__}, threads {threads}, "
          f"backends {kernels.available()}")  # fmt: skip
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---:|" * len(COLUMNS))
    for batch, seq_len in sizes:
        x = torch.randn(batch, seq_len, d_model)
        iters = [iterations(make(d_model, init), x) for init in ("random", "trained-like")]
        best = best_cpu_seconds(variants(d_model, x))

        def ratio(key: str, base: str, best: dict[str, float] = best) -> str:
            return f"{best[key] / best[base]:.2f}" if key in best else "n/a"

        cells = [
            batch, seq_len, *iters, f"{best['loop_f'] * 1e3:.0f}",
            ratio("newton_f_torch", "loop_f"), ratio("newton_f_numba", "loop_f"),
            f"{best['loop_fb'] * 1e3:.0f}",
            ratio("newton_fb_torch", "loop_fb"), ratio("newton_fb_numba", "loop_fb"),
            ratio("gru_f", "loop_f"), ratio("gru_fb", "loop_fb"),
        ]  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main(*args)
