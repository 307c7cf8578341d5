"""Peers for ``statewise bench speed --peers``: other implementations of the same layer,
timed on the same shapes in the same process; each result holds the ratio ours/peer of
tokens/s (above 1: ours is faster).

- ``torch.nn.LSTM`` / ``torch.nn.GRU`` (oneDNN) for lstm / gru;
- an eager per-step PyTorch loop of the same cell (FlashRNN's "vanilla" baseline): the
  input projection is one GEMM over the whole sequence, then a Python loop over time does
  the recurrent part (for lstm, gru and mingru);
- ``minGRU_pytorch.minGRU`` (mingru-pytorch, log-space Heinsen scan) for mingru;
- ``mambapy.mamba.MambaBlock`` (parallel scan ``pscan``) for mamba;
- transformers' ``MambaMixer`` without its CUDA kernels, the sequential slow path, for mamba.

transformers' slow path indexes its (B, D, T, N) discretised tensors one step at a time,
so its backward costs O(T^2) memory traffic (measured here: 13 s for one forward+backward
at B4 T256 D256, about 16 times that at T1024); above ``max_backward_len`` = 256 only its
forward is timed and its fwd+bwd numbers are None.

A peer whose package is not installed is reported with status ``missing``; a peer that
fails at run time with status ``error: ...``; neither stops the run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from statewise.bench.speed import Shape, throughput


@dataclass(frozen=True)
class Peer:
    name: str
    module: str  # the import that must be available
    build: Callable[[Shape], nn.Module]  # a module mapping (B, T, D) -> (B, T, D)
    max_backward_len: int | None = None  # longer sequences: forward only (see the docstring)


# ------------------------------------------------------------------ torch.nn
class _TorchRNN(nn.Module):
    def __init__(self, cls: type[nn.RNNBase], d_model: int) -> None:
        super().__init__()
        self.rnn = cls(d_model, d_model, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


# ------------------------------------------------------------------ eager loops
class EagerLSTM(nn.Module):
    """The LSTM cell as a per-step Python loop; input projection as one GEMM."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.inp = nn.Linear(d_model, 4 * d_model)
        self.rec = nn.Linear(d_model, 4 * d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp = self.inp(x)
        h = c = x.new_zeros(x.shape[0], x.shape[2])
        out = []
        for t in range(x.shape[1]):
            i, f, g, o = (xp[:, t] + self.rec(h)).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            out.append(h)
        return torch.stack(out, dim=1)


class EagerGRU(nn.Module):
    """The GRU cell (torch.nn's equations) as a per-step Python loop."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.inp = nn.Linear(d_model, 3 * d_model)
        self.rec = nn.Linear(d_model, 3 * d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xr, xz, xn = self.inp(x).chunk(3, dim=-1)
        h = x.new_zeros(x.shape[0], x.shape[2])
        out = []
        for t in range(x.shape[1]):
            hr, hz, hn = self.rec(h).chunk(3, dim=-1)
            r = torch.sigmoid(xr[:, t] + hr)
            z = torch.sigmoid(xz[:, t] + hz)
            n = torch.tanh(xn[:, t] + r * hn)
            h = (1 - z) * n + z * h
            out.append(h)
        return torch.stack(out, dim=1)


class EagerMinGRU(nn.Module):
    """minGRU as a per-step Python loop: h_t = (1 - z_t) h_{t-1} + z_t h~_t."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.inp = nn.Linear(d_model, 2 * d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, cand = self.inp(x).chunk(2, dim=-1)
        z = torch.sigmoid(gate)
        h = x.new_zeros(x.shape[0], x.shape[2])
        out = []
        for t in range(x.shape[1]):
            h = torch.lerp(h, cand[:, t], z[:, t])
            out.append(h)
        return torch.stack(out, dim=1)


# ------------------------------------------------------------------ packages
def _mingru_pytorch(shape: Shape) -> nn.Module:
    from minGRU_pytorch import minGRU

    return minGRU(shape.d_model)


def _mambapy(shape: Shape) -> nn.Module:
    from mambapy.mamba import MambaBlock, MambaConfig

    return MambaBlock(MambaConfig(d_model=shape.d_model, n_layers=1, d_state=16, expand_factor=2))


class _HFMamba(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        from transformers import MambaConfig
        from transformers.models.mamba.modeling_mamba import MambaMixer

        config = MambaConfig(hidden_size=d_model, state_size=16, expand=2, conv_kernel=4)
        for flag in ("use_mambapy", "use_associative_scan"):
            if hasattr(config, flag):
                setattr(config, flag, False)  # the plain sequential loop
        self.mixer = MambaMixer(config, layer_idx=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slow = getattr(self.mixer, "slow_forward", None)
        return slow(x) if slow is not None else self.mixer(x)


PEERS: dict[str, list[Peer]] = {
    "lstm": [
        Peer("torch.nn.LSTM", "torch", lambda s: _TorchRNN(nn.LSTM, s.d_model)),
        Peer("eager loop", "torch", lambda s: EagerLSTM(s.d_model)),
    ],
    "gru": [
        Peer("torch.nn.GRU", "torch", lambda s: _TorchRNN(nn.GRU, s.d_model)),
        Peer("eager loop", "torch", lambda s: EagerGRU(s.d_model)),
    ],
    "mingru": [
        Peer("eager loop", "torch", lambda s: EagerMinGRU(s.d_model)),
        Peer("mingru-pytorch", "minGRU_pytorch", _mingru_pytorch),
    ],
    "mamba": [
        Peer("mambapy MambaBlock", "mambapy", _mambapy),
        Peer(
            "transformers MambaMixer (slow path)",
            "transformers",
            lambda s: _HFMamba(s.d_model),
            max_backward_len=256,
        ),
    ],
}


def peers_for(name: str) -> list[Peer]:
    """The peers of the layer ``name`` (empty if it has none)."""
    return PEERS.get(name, [])


def measure_peer(peer: Peer, ours: dict, shape: Shape, repeats: int) -> dict:
    """Tokens/s of ``peer`` at ``shape`` and the ratios ours/peer (None if ours failed)."""
    out = {"peer": peer.name}
    if importlib.util.find_spec(peer.module) is None:
        return {**out, "status": f"missing (module {peer.module} is not installed)"}
    try:
        torch.manual_seed(0)
        module = peer.build(shape)
        x = torch.randn(shape.batch, shape.seq_len, shape.d_model)
        backward = peer.max_backward_len is None or shape.seq_len <= peer.max_backward_len
        out.update(throughput(module, list(module.parameters()), x, repeats, backward))
    except Exception as err:  # a peer's failure is a result, not a crash
        return {**out, "status": f"error: {type(err).__name__}: {err}"}
    out["status"] = "ok"
    for key in ("forward", "fwd_bwd"):
        mine = ours.get(f"{key}_tps")
        theirs = out[f"{key}_tps"]
        out[f"{key}_ratio"] = None if mine is None or theirs is None else mine / theirs
    return out
