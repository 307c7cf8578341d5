"""H1 measurement: candidates for the diagonal recurrence (and the selective scan) on CPU.

nice -n 5 python benchmarks/scan_candidates.py [--quick] [--one-thread]
Every candidate is timed in the same process, interleaved round by round, median of rounds;
ratios are against the torch loop (the twin). Machine shared with other jobs: ratios only.
"""

from __future__ import annotations

import statistics
import sys
import time

import numba
import torch
from torch.utils.cpp_extension import load_inline

from statewise import kernels
from statewise.bench.machine import measure_bandwidth
from statewise.kernels import scan as kscan
from statewise.ops.scan import linear_recurrence_loop, linear_recurrence_scan
from statewise.ops.selective_scan import selective_scan

QUICK = "--quick" in sys.argv
if "--one-thread" in sys.argv:  # every candidate on one thread (fairest on a loaded machine)
    torch.set_num_threads(1)
ROUNDS = 5 if QUICK else 9
SS_ROUNDS = 3  # the torch selective scan takes 5-30 s a call on the shared machine

CPP = r"""
#include <torch/extension.h>
// h_t = a_t h_{t-1} + b_t over dim 1 of contiguous (B, T, D) float32; parallel over batch
torch::Tensor fwd(torch::Tensor a, torch::Tensor b, torch::Tensor h0, bool parallel) {
  auto out = torch::empty_like(b);
  const int64_t B = b.size(0), T = b.size(1), D = b.size(2);
  const float* A = a.data_ptr<float>(); const float* X = b.data_ptr<float>();
  const float* H0 = h0.data_ptr<float>(); float* O = out.data_ptr<float>();
  #pragma omp parallel for if(parallel)
  for (int64_t i = 0; i < B; ++i) {
    const float* prev = H0 + i * D;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t o = (i * T + t) * D;
      float* __restrict__ cur = O + o;
      for (int64_t d = 0; d < D; ++d) cur[d] = A[o + d] * prev[d] + X[o + d];
      prev = cur;
    }
  }
  return out;
}
// G_t = g_t + a_{t+1} G_{t+1}; grad_a = G_t h_{t-1}; grad_h0 = a_0 G_0
std::vector<torch::Tensor> bwd(torch::Tensor a, torch::Tensor h0, torch::Tensor out,
                               torch::Tensor g, bool parallel) {
  auto gb = torch::empty_like(out); auto ga = torch::empty_like(a);
  auto gh = torch::empty_like(h0);
  const int64_t B = out.size(0), T = out.size(1), D = out.size(2);
  const float* A = a.data_ptr<float>(); const float* H = out.data_ptr<float>();
  const float* H0 = h0.data_ptr<float>(); const float* Gi = g.data_ptr<float>();
  float* GB = gb.data_ptr<float>(); float* GA = ga.data_ptr<float>();
  float* GH = gh.data_ptr<float>();
  #pragma omp parallel for if(parallel)
  for (int64_t i = 0; i < B; ++i) {
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t o = (i * T + t) * D;
      const float* prev = t > 0 ? H + o - D : H0 + i * D;
      float* __restrict__ cur = GB + o;
      if (t == T - 1) for (int64_t d = 0; d < D; ++d) cur[d] = Gi[o + d];
      else for (int64_t d = 0; d < D; ++d) cur[d] = Gi[o + d] + A[o + D + d] * cur[D + d];
      for (int64_t d = 0; d < D; ++d) GA[o + d] = cur[d] * prev[d];
    }
    for (int64_t d = 0; d < D; ++d) GH[i * D + d] = A[i * T * D + d] * GB[i * T * D + d];
  }
  return {ga, gb, gh};
}
"""


class CppLoop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0, parallel):
        out = EXT.fwd(a, b, h0, parallel)
        ctx.save_for_backward(a, h0, out)
        ctx.parallel = parallel
        return out

    @staticmethod
    def backward(ctx, g):
        a, h0, out = ctx.saved_tensors
        ga, gb, gh = EXT.bwd(a, h0, out, g.contiguous(), ctx.parallel)
        return ga, gb, gh, None


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def serial_numba(fn):
    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(1)  # threads_for() follows torch's thread count
        try:
            fn()
        finally:
            torch.set_num_threads(before)

    return run


def with_backend(name, fn):
    def run():
        with kernels.use(name):
            fn()

    return run


def compare(title, candidates, baseline, rounds=ROUNDS):
    for fn in candidates.values():  # warm up (JIT, caches)
        fn()
    times = {k: [] for k in candidates}
    for _ in range(rounds):
        for k, fn in candidates.items():
            times[k].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    print(f"\n{title}  ({rounds} interleaved rounds; ratio = baseline / time)")
    print(f"  {'':32s} {'median':>9s}    {'ratio':>6s}  {'min':>9s}    {'ratio':>6s}")
    for k in med:
        print(
            f"  {k:32s} {med[k] * 1e3:9.2f} ms x{med[baseline] / med[k]:6.2f}"
            f"  {best[k] * 1e3:9.2f} ms x{best[baseline] / best[k]:6.2f}"
        )
    return best


def main():
    global EXT
    t0 = time.perf_counter()
    EXT = load_inline(
        "statewise_scan_candidate_cpp",
        cpp_sources=CPP,
        functions=["fwd", "bwd"],
        extra_cflags=["-O3", "-march=native", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
    )
    print(f"C++ extension built in {time.perf_counter() - t0:.1f} s")
    print(
        f"torch threads {torch.get_num_threads()}, numba threads {numba.get_num_threads()}, "
        f"numba layer: {numba.config.THREADING_LAYER}"
    )

    B, T, D = (8, 1024, 512)
    g = torch.Generator().manual_seed(0)
    a = torch.rand(B, T, D, generator=g) * 0.5 + 0.5
    b = torch.randn(B, T, D, generator=g)
    h0 = torch.randn(B, D, generator=g)
    grad = torch.randn(B, T, D, generator=g)

    # correctness of the C++ loop against the twin, so the race is fair
    with kernels.use("torch"):
        want = linear_recurrence_loop(a, b, h0)
    assert torch.allclose(EXT.fwd(a, b, h0, True), want, atol=1e-4)

    fwd = {
        "numba parallel": with_backend("numba", lambda: linear_recurrence_loop(a, b, h0)),
        "numba serial": serial_numba(
            with_backend("numba", lambda: linear_recurrence_loop(a, b, h0))
        ),
        "C++ (gcc -O3) parallel": lambda: EXT.fwd(a, b, h0, True),
        "C++ (gcc -O3) serial": lambda: EXT.fwd(a, b, h0, False),
        "torch loop (twin)": with_backend("torch", lambda: linear_recurrence_loop(a, b, h0)),
        "torch Hillis-Steele scan": lambda: linear_recurrence_scan(a, b, h0),
    }
    with torch.no_grad():
        med = compare(
            f"diagonal recurrence forward, float32 B{B} T{T} D{D}", fwd, "torch loop (twin)"
        )

    def train(fn):
        def run():
            leaves = [t.clone().requires_grad_(True) for t in (a, b, h0)]
            fn(*leaves).backward(grad)

        return run

    fb = {
        "numba parallel": with_backend("numba", train(linear_recurrence_loop)),
        "numba serial": serial_numba(with_backend("numba", train(linear_recurrence_loop))),
        "C++ (gcc -O3) parallel": train(lambda *x: CppLoop.apply(*x, True)),
        "C++ (gcc -O3) serial": train(lambda *x: CppLoop.apply(*x, False)),
        "torch loop (twin)": with_backend("torch", train(linear_recurrence_loop)),
        "torch Hillis-Steele scan": train(linear_recurrence_scan),
    }
    compare(
        f"diagonal recurrence forward+backward, float32 B{B} T{T} D{D}", fb, "torch loop (twin)"
    )

    bw = measure_bandwidth(numel=2**24 if QUICK else 64 * 2**20)
    moved = 3 * a.numel() * a.element_size()  # read a, b; write h
    print(
        "\nmachine bandwidth (statewise.bench.machine.measure_bandwidth): "
        + ", ".join(f"{k} {v:.1f} GB/s" for k, v in bw.items())
    )
    for k in ("numba parallel", "numba serial", "C++ (gcc -O3) parallel", "torch loop (twin)"):
        gbs = moved / med[k] / 1e9  # the best round
        print(f"  {k}: {gbs:.1f} GB/s = {gbs / max(bw.values()):.0%} of the best measured")

    Bs, Ts, Ds, Ns = 4, 1024, 512, 16
    x = torch.randn(Bs, Ts, Ds, generator=g)
    dt = torch.nn.functional.softplus(torch.randn(Bs, Ts, Ds, generator=g) - 2)
    A = -torch.arange(1, Ns + 1, dtype=torch.float32).repeat(Ds, 1)
    Bm, Cm = torch.randn(Bs, Ts, Ns, generator=g), torch.randn(Bs, Ts, Ns, generator=g)
    Dv, hs0 = torch.ones(Ds), torch.zeros(Bs, Ds, Ns)
    args = (x, dt, A, Bm, Cm, Dv, hs0)
    gy = torch.randn(Bs, Ts, Ds, generator=g)

    def ss_train(backend, mode="loop"):
        def run():
            leaves = [t.clone().requires_grad_(True) for t in args]
            with kernels.use(backend):
                y, _ = selective_scan(*leaves, mode=mode)
            y.backward(gy)

        return run

    def ss_fwd(backend, mode="loop"):
        return with_backend(backend, lambda: selective_scan(*args, mode=mode))

    title = f"selective scan, float32 B{Bs} T{Ts} D{Ds} N{Ns}"
    with torch.no_grad():
        compare(
            title + " forward",
            {
                "numba fused parallel": ss_fwd("numba"),
                "numba fused serial": serial_numba(ss_fwd("numba")),
                "torch loop (chunked)": ss_fwd("torch"),
            },
            "torch loop (chunked)",
            SS_ROUNDS,
        )
    compare(
        title + " forward+backward",
        {
            "numba fused parallel": ss_train("numba"),
            "numba fused serial": serial_numba(ss_train("numba")),
            "torch loop (chunked)": ss_train("torch"),
        },
        "torch loop (chunked)",
        SS_ROUNDS,
    )
    _ = kscan  # imported so a missing numba fails at the top


if __name__ == "__main__":
    main()
