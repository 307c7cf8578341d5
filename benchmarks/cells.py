"""The fused nonlinear cells (ATen path, numba kernel, torch loop, eager loop), as ratios.

Every path runs on ONE thread (torch and
numba) and is timed by the process CPU time (time.process_time), min over interleaved reps.
usage: nice -n 5 python -u benchmarks/cells.py T_single T_multi reps
"""

import sys
import time

import numba
import torch

import statewise.kernels as K
import statewise.layers as L
from statewise.layers.classic import TORCH_STYLE
from statewise.layers.slstm import slstm_pointwise

torch.set_num_threads(1)
numba.set_num_threads(1)
T1, T2, REPS = (int(a) for a in sys.argv[1:4])
torch.manual_seed(0)


def compare(fns: dict) -> dict:
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(REPS):
        for k, fn in fns.items():
            t0 = time.process_time()
            fn()
            best[k] = min(best[k], time.process_time() - t0)
    return best


def fwd(m, x, backend="torch"):
    def run():
        with torch.no_grad(), K.use(backend):
            m(x)

    return run


def fwdbwd(m, x, backend="torch"):
    def run():
        with K.use(backend):
            m(x)[0].sum().backward()

    return run


class EagerCell(torch.nn.Module):
    """FlashRNN's "vanilla" baseline: a Python loop over time calling the head-wise cell,
    autograd through it (the same math as statewise's twin loop, written plainly)."""

    def __init__(self, cell, d_model, heads):
        super().__init__()
        self.cell, self.heads, self.d = cell, heads, d_model // heads
        g = 4 if cell in ("lstm", "slstm") else 3
        self.g = g
        self.w_ih = torch.nn.Linear(d_model, g * d_model)
        self.r = torch.nn.Parameter(torch.randn(heads, self.d, g * self.d) * self.d**-0.5)

    def forward(self, x):
        B, T, _ = x.shape
        K_, d = self.heads, self.d
        wx = self.w_ih(x).view(B, T, K_, self.g * d).permute(1, 2, 0, 3)  # (T, K, B, G d)
        h = x.new_zeros(K_, B, d)
        c = x.new_zeros(K_, B, d)
        n = x.new_zeros(K_, B, d)
        m = x.new_zeros(K_, B, d)
        ys = []
        for wx_t in wx.unbind(0):
            pre = torch.baddbmm(wx_t, h, self.r).view(K_, B, self.g, d)
            if self.cell == "lstm":
                i, f, z, o = pre.unbind(2)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
                h = torch.sigmoid(o) * torch.tanh(c)
            else:
                h, c, n, m = slstm_pointwise(pre, (h, c, n, m))
            ys.append(h)
        return torch.stack(ys, 2).permute(1, 2, 0, 3).reshape(B, T, -1), None


print(f"torch {torch.__version__}, 1 thread (torch and numba), process CPU time, min of {REPS}")
B, D = 16, 256
if T1 > 0:
    x = torch.randn(B, T1, D)
    xg = x.clone().requires_grad_(True)
for name, nn_cls in [("lstm", torch.nn.LSTM), ("gru", torch.nn.GRU)] if T1 > 0 else []:
    mods = {
        "torch.nn": nn_cls(D, D, batch_first=True),
        "mixer": L.get(name, d_model=D),
        "drop-in": TORCH_STYLE[name](D, D, batch_first=True),
    }
    f = compare({k: fwd(m, x) for k, m in mods.items()})
    fb = compare({k: fwdbwd(m, xg) for k, m in mods.items()})
    for k in mods:
        print(
            f"{name} B{B} T{T1} H{D} {k:9s} fwd {f[k] * 1e3:8.1f} ms "
            f"({f['torch.nn'] / f[k]:.2f}x torch.nn)"
            f"  fwd+bwd {fb[k] * 1e3:8.1f} ms ({fb['torch.nn'] / fb[k]:.2f}x)",
            flush=True,
        )

B, D, HEADS = 16, 768, 12
x = torch.randn(B, T2, D)
xg = x.clone().requires_grad_(True)
proj = torch.nn.Linear(D, 4 * D)
t = compare({"f": fwd(lambda x: (proj(x), None), x)})
tb = compare({"fb": fwdbwd(lambda x: (proj(x), None), xg)})
print(
    f"input projection alone (768 -> 3072): fwd {t['f'] * 1e3:.1f} ms, "
    f"fwd+bwd {tb['fb'] * 1e3:.1f} ms",
    flush=True,
)
for name in ["lstm", "slstm"]:
    m = L.get(name, d_model=D, n_heads=HEADS)
    if name == "slstm":
        with torch.no_grad():
            m.recurrent_weight.normal_(0, (D // HEADS) ** -0.5)
    eager = EagerCell(name, D, HEADS)
    for label, mk in [("fwd", fwd), ("fwd+bwd", fwdbwd)]:
        t = compare(
            {
                "numba": mk(m, x if label == "fwd" else xg, "numba"),
                "twin": mk(m, x if label == "fwd" else xg, "torch"),
                "eager": mk(eager, x if label == "fwd" else xg),
            }
        )
        print(
            f"{name} {HEADS}x{D // HEADS} B{B} T{T2} {label:8s} numba {t['numba'] * 1e3:8.1f} ms, "
            f"torch twin {t['twin'] * 1e3:8.1f} ms, eager loop {t['eager'] * 1e3:8.1f} ms: "
            f"numba = {t['twin'] / t['numba']:.2f}x twin, {t['eager'] / t['numba']:.2f}x eager",
            flush=True,
        )
