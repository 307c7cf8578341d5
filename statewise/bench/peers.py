"""Peers for ``statewise bench speed --peers`` and ``statewise bench targets``: other
implementations of the same layer, timed on the same shapes in the same process; each
result holds the ratio ours/peer of tokens/s (above 1: ours is faster).

A peer is built from the shape and from our layer (``build(shape, ours)``), so that it can
copy our layer's configuration (its heads, its widths) but never its weights: speed only.

- ``torch.nn.LSTM`` / ``torch.nn.GRU`` (oneDNN) for lstm / gru;
- an eager per-step PyTorch loop of the same cell (FlashRNN's "vanilla" baseline): the
  input projection is one GEMM over the whole sequence, then a Python loop over time does
  the recurrent part, written here from the equations with plain torch ops (so it does
  not get faster when statewise's kernels do). The loops walk the projected sequence with
  ``unbind``, not ``xp[:, t]``: an index's backward scatters into a zero tensor of the
  whole sequence at every step, O(T^2) memory traffic that would make the baseline
  unfairly slow (26 times slower fwd+bwd for sLSTM at D768 T1024). Loops: lstm (H heads,
  block-diagonal recurrent weights; H = 1 is the classic LSTM), gru, slstm, and mingru
  ("hoisted projections");
- for the diagonal layers (mingru, minlstm, lru, rglru, hgrn): our own layer's ``step``
  called in a Python loop with autograd, under the pure-PyTorch backend ("eager step
  loop"). It does the projections token by token too, so it is a weaker baseline than a
  loop with hoisted projections; the docs say so;
- ``minGRU_pytorch.minGRU`` (mingru-pytorch, log-space Heinsen scan) for mingru;
- ``mambapy.mamba.MambaBlock`` (parallel scan ``pscan``) for mamba;
- transformers' ``MambaMixer`` without its CUDA kernels, the sequential slow path, for mamba;
- transformers' ``RwkvBlock``, which is RWKV-4 (a per-channel vector state, no heads, no
  data-dependent decay), against our rwkv, which is RWKV-6 (a head_dim x head_dim matrix
  state per head, LoRA token shift and decay): the same block layout (time mix + channel
  mix, ffn width 3.5 D), a different and lighter recurrence. On CPU its WKV is a Python
  loop over time;
- transformers' ``RecurrentGemmaRecurrentBlock`` for rglru: the same block, parameter for
  parameter (our rglru loads its state dict as is), its RG-LRU a Python loop on CPU;
- the xlstm package on CPU: ``mLSTMLayer`` (conv, headwise q/k/v, its parallel stabilised
  backend, quadratic in T; up-projection factor 1 so its inner width equals d_model like
  ours) for mlstm, and ``sLSTMLayer`` with the "vanilla" backend (a Python loop over
  time; no conv, like ours) for slstm.

transformers' Mamba slow path indexes its (B, D, T, N) discretised tensors one step at a
time, so its backward costs O(T^2) memory traffic (measured here: 13 s for one
forward+backward at B4 T256 D256, about 16 times that at T1024); above
``max_backward_len`` = 256 only its forward is timed and its fwd+bwd numbers are None.
xlstm's parallel mLSTM holds (B, H, T, T) matrices: above ``max_len`` = 2048 it is skipped.

A peer whose package is not installed is reported with status ``missing``; a peer that
fails at run time with status ``error: ...``; neither stops the run.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from statewise import kernels
from statewise.bench.machine import SLOW_CALL_S
from statewise.bench.speed import Shape, throughput
from statewise.errors import ArgumentError


@dataclass(frozen=True)
class Peer:
    name: str
    module: str  # the import that must be available
    build: Callable[[Shape, nn.Module], nn.Module]  # (shape, our layer) -> (B, T, D) -> (B, T, D)
    max_backward_len: int | None = None  # longer sequences: forward only (see the docstring)
    max_len: int | None = None  # longer sequences: not run


# ------------------------------------------------------------------ torch.nn
class _TorchRNN(nn.Module):
    def __init__(self, cls: type[nn.RNNBase], d_model: int) -> None:
        super().__init__()
        self.rnn = cls(d_model, d_model, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


# ------------------------------------------------------------------ eager loops
class EagerLSTM(nn.Module):
    """The LSTM cell as a per-step Python loop, input projection as one GEMM; H heads of
    width d = D / H, each with its own d x 4d recurrent block (H = 1: the classic LSTM):

        [i f g o]_t = W x_t + b + R h_{t-1}  (R block-diagonal over heads)
        c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g),   h_t = sigmoid(o) tanh(c_t)
    """

    def __init__(self, d_model: int, n_heads: int = 1) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.inp = nn.Linear(d_model, 4 * d_model)
        self.rec = nn.Parameter(torch.randn(n_heads, self.head_dim, 4 * self.head_dim) * 0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        xp = self.inp(x).view(batch, seq_len, self.n_heads, 4 * self.head_dim).transpose(0, 2)
        h = c = x.new_zeros(self.n_heads, batch, self.head_dim)
        out = []
        for xp_t in xp.unbind(1):  # xp: (H, T, B, 4d)
            i, f, g, o = torch.baddbmm(xp_t, h, self.rec).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            out.append(h)
        return torch.stack(out, dim=2).permute(1, 2, 0, 3).reshape(x.shape)


class EagerGRU(nn.Module):
    """The GRU cell (torch.nn's equations) as a per-step Python loop."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.inp = nn.Linear(d_model, 3 * d_model)
        self.rec = nn.Linear(d_model, 3 * d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], x.shape[2])
        out = []
        for xp_t in self.inp(x).unbind(1):
            xr, xz, xn = xp_t.chunk(3, dim=-1)
            hr, hz, hn = self.rec(h).chunk(3, dim=-1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h = (1 - z) * n + z * h
            out.append(h)
        return torch.stack(out, dim=1)


class EagerSLSTM(nn.Module):
    """The stabilised sLSTM cell (H heads, block-diagonal R) as a per-step Python loop:

    [z i f o]~_t = W x_t + b + R h_{t-1}
    m_t = max(logsigmoid(f~) + m_{t-1}, i~),  i' = exp(i~ - m_t),
    f' = exp(logsigmoid(f~) + m_{t-1} - m_t)
    c_t = f' c_{t-1} + i' tanh(z~),  n_t = f' n_{t-1} + i',  h_t = sigmoid(o~) c_t / n_t
    y_t = per-head LayerNorm(h_t)
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.inp = nn.Linear(d_model, 4 * d_model)
        self.rec = nn.Parameter(torch.randn(n_heads, self.head_dim, 4 * self.head_dim) * 0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        xp = self.inp(x).view(batch, seq_len, self.n_heads, 4 * self.head_dim).transpose(0, 2)
        h = c = n = x.new_zeros(self.n_heads, batch, self.head_dim)
        m = torch.full_like(h, -torch.inf)
        out = []
        for xp_t in xp.unbind(1):
            z, i, f, o = torch.baddbmm(xp_t, h, self.rec).chunk(4, dim=-1)
            log_f = F.logsigmoid(f)
            m_new = torch.maximum(log_f + m, i)
            i, f = torch.exp(i - m_new), torch.exp(log_f + m - m_new)
            c = f * c + i * torch.tanh(z)
            n = f * n + i
            h, m = torch.sigmoid(o) * c / n, m_new
            out.append(h)
        h = torch.stack(out, dim=2).permute(1, 2, 0, 3).reshape(batch * seq_len, -1)
        return F.group_norm(h, self.n_heads).view(x.shape)


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
        for cand_t, z_t in zip(cand.unbind(1), z.unbind(1)):
            h = torch.lerp(h, cand_t, z_t)
            out.append(h)
        return torch.stack(out, dim=1)


class StepLoop(nn.Module):
    """Our layer's ``step`` in a Python loop over time, with autograd, always under the
    pure-PyTorch backend: the eager per-step baseline of a diagonal layer."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = copy.deepcopy(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with kernels.use("torch"):
            state = self.layer.init_state(x.shape[0])
            out = []
            for x_t in x.unbind(1):
                y_t, state = self.layer.step(x_t, state)
                out.append(y_t)
        return torch.stack(out, dim=1)


# ------------------------------------------------------------------ packages
def _mingru_pytorch(shape: Shape, ours: nn.Module) -> nn.Module:
    from minGRU_pytorch import minGRU

    return minGRU(shape.d_model)


def _mambapy(shape: Shape, ours: nn.Module) -> nn.Module:
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


class _HFRwkv4(nn.Module):
    """transformers' RWKV-4 block (layer 1: no pre-LayerNorm), ffn width 3.5 D as ours."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        from transformers import RwkvConfig
        from transformers.models.rwkv.modeling_rwkv import RwkvBlock

        config = RwkvConfig(
            hidden_size=d_model,
            attention_hidden_size=d_model,
            intermediate_size=int(3.5 * d_model),
            num_hidden_layers=2,
        )
        self.block = RwkvBlock(config, layer_id=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)[0]


class _HFRecurrentGemma(nn.Module):
    """transformers' RecurrentGemmaRecurrentBlock at our rglru's widths and heads."""

    def __init__(self, ours: nn.Module) -> None:
        super().__init__()
        from transformers import RecurrentGemmaConfig
        from transformers.models.recurrent_gemma.modeling_recurrent_gemma import (
            RecurrentGemmaRecurrentBlock,
        )

        config = RecurrentGemmaConfig(
            hidden_size=ours.d_model,
            lru_width=ours.lru_width,
            num_attention_heads=ours.n_heads,
            conv1d_width=ours.conv_width,
            num_hidden_layers=1,
        )
        self.block = RecurrentGemmaRecurrentBlock(config, layer_idx=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        position_ids = torch.arange(x.shape[1]).expand(x.shape[0], -1)
        return self.block(x, position_ids, None, use_cache=False)[0]


def _xlstm_mlstm(shape: Shape, ours: nn.Module) -> nn.Module:
    from xlstm.blocks.mlstm.layer import mLSTMLayer, mLSTMLayerConfig

    config = mLSTMLayerConfig(
        embedding_dim=shape.d_model,
        num_heads=ours.n_heads,
        proj_factor=1.0,
        context_length=shape.seq_len,
    )
    return mLSTMLayer(config)


class _XlstmSLSTM(nn.Module):
    def __init__(self, ours: nn.Module) -> None:
        super().__init__()
        from xlstm.blocks.slstm.layer import sLSTMLayer, sLSTMLayerConfig

        config = sLSTMLayerConfig(
            embedding_dim=ours.d_model,
            num_heads=ours.n_heads,
            backend="vanilla",
            conv1d_kernel_size=0,
        )
        self.layer = sLSTMLayer(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _heads(layer: nn.Module) -> int:
    return getattr(layer, "n_heads", 1)


_STEP_LOOP = Peer("eager step loop", "torch", lambda s, ours: StepLoop(ours))
_MINGRU_PYTORCH = Peer("mingru-pytorch", "minGRU_pytorch", _mingru_pytorch)

PEERS: dict[str, list[Peer]] = {
    "lstm": [
        Peer("torch.nn.LSTM", "torch", lambda s, ours: _TorchRNN(nn.LSTM, s.d_model)),
        Peer("eager loop", "torch", lambda s, ours: EagerLSTM(s.d_model, _heads(ours))),
    ],
    "gru": [
        Peer("torch.nn.GRU", "torch", lambda s, ours: _TorchRNN(nn.GRU, s.d_model)),
        Peer("eager loop", "torch", lambda s, ours: EagerGRU(s.d_model)),
    ],
    "slstm": [
        Peer("eager loop", "torch", lambda s, ours: EagerSLSTM(s.d_model, ours.n_heads)),
        Peer("xlstm sLSTMLayer (vanilla)", "xlstm", lambda s, ours: _XlstmSLSTM(ours)),
    ],
    "mingru": [
        Peer("eager loop (hoisted projections)", "torch", lambda s, ours: EagerMinGRU(s.d_model)),
        _STEP_LOOP,
        _MINGRU_PYTORCH,
    ],
    "minlstm": [_STEP_LOOP, _MINGRU_PYTORCH],
    "lru": [_STEP_LOOP, _MINGRU_PYTORCH],
    "rglru": [
        _STEP_LOOP,
        _MINGRU_PYTORCH,
        Peer(
            "transformers RecurrentGemma recurrent block",
            "transformers",
            lambda s, ours: _HFRecurrentGemma(ours),
        ),
    ],
    "hgrn": [_STEP_LOOP, _MINGRU_PYTORCH],
    "mamba": [
        Peer("mambapy MambaBlock", "mambapy", _mambapy),
        Peer(
            "transformers MambaMixer (slow path)",
            "transformers",
            lambda s, ours: _HFMamba(s.d_model),
            max_backward_len=256,
        ),
    ],
    "mlstm": [Peer("xlstm mLSTMLayer (parallel)", "xlstm", _xlstm_mlstm, max_len=2048)],
    "rwkv": [
        Peer(
            "transformers RWKV-4 block (not RWKV-6)",
            "transformers",
            lambda s, ours: _HFRwkv4(s.d_model),
        )
    ],
}


def peers_for(name: str) -> list[Peer]:
    """The peers of the layer ``name`` (empty if it has none)."""
    return PEERS.get(name, [])


def find_peer(layer: str, name: str) -> Peer:
    """The peer called ``name`` of ``layer``; ValueError if there is none."""
    for peer in peers_for(layer):
        if peer.name == name:
            return peer
    raise ArgumentError(f"layer {layer!r} has no peer {name!r}")


def time_peer(
    peer: Peer, ours: nn.Module, shape: Shape, repeats: int, budget_s: float = SLOW_CALL_S
) -> dict:
    """Tokens/s of ``peer`` at ``shape``: ``{"peer", "status", "forward_tps", "fwd_bwd_tps"}``;
    status "ok", "missing ...", "skipped ..." or "error: ..."; ``budget_s`` as in
    :func:`~statewise.bench.machine.median_seconds`."""
    out = {"peer": peer.name}
    if importlib.util.find_spec(peer.module) is None:
        return {**out, "status": f"missing (module {peer.module} is not installed)"}
    if peer.max_len is not None and shape.seq_len > peer.max_len:
        return {**out, "status": f"skipped (T > {peer.max_len}, see peers.py)"}
    try:
        torch.manual_seed(0)
        module = peer.build(shape, ours)
        x = torch.randn(shape.batch, shape.seq_len, shape.d_model)
        backward = peer.max_backward_len is None or shape.seq_len <= peer.max_backward_len
        out.update(throughput(module, list(module.parameters()), x, repeats, backward, budget_s))
    except Exception as err:  # a peer's failure is a result, not a crash
        return {**out, "status": f"error: {type(err).__name__}: {err}"}
    out["status"] = "ok"
    return out


def with_ratios(timed: dict, ours: dict) -> dict:
    """``timed`` (from :func:`time_peer`) plus ours/peer ratios (None where either is None)."""
    out = dict(timed)
    if timed.get("status") != "ok":
        return out
    for key in ("forward", "fwd_bwd"):
        mine, theirs = ours.get(f"{key}_tps"), timed[f"{key}_tps"]
        out[f"{key}_ratio"] = None if mine is None or theirs is None else mine / theirs
    return out
