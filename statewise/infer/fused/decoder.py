"""FusedDecoder: a language model's decode step over numba kernels (see the package doc).

Per block, with x the residual stream (B, D) as a NumPy array::

    u = norm_1(x);   x += mixer.step(u, state)     the mixer's stepper (one per family)
    x += mlp(norm_2(x))                             linear, activation, linear into x

then logits = unembed(norm(x)) (soft-capped when the config says so). The steppers are
registered by mixer class in :data:`STEPPERS`; a model whose every mixer has one, whose
norms, MLPs and projections are the stock modules (not quantized ones) and whose weights
are float32 or float64 on the CPU is :func:`fusable`.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numba
import numpy as np
import torch
from torch import nn

from statewise import layers
from statewise.errors import ArgumentError
from statewise.kernels import decode
from statewise.kernels.scan import torch_threads_kept
from statewise.models import LanguageModel
from statewise.models.block import MLP, Block, RMSNormPlusOne
from statewise.ops.tree import State, tree_leaves, tree_map

_PACKAGE_PATH = [str(Path(__file__).parent)]
#: a mixer's stepper: (normed input u (B, D), state) -> state, adding its output into the
#: residual x (B, D); it may update the state's tensors in place
Stepper = Callable[[np.ndarray, State, np.ndarray], State]
#: mixer class -> a function building its stepper from the module
STEPPERS: dict[type, Callable[[nn.Module], Stepper]] = {}


def register_stepper(*classes: type) -> Callable:
    def wrap(build: Callable[[nn.Module], Stepper]) -> Callable[[nn.Module], Stepper]:
        for cls in classes:
            STEPPERS[cls] = build
        return build

    return wrap


_active = threading.local()  # .views: the running decoder's cache of parameter views


def array(t: torch.Tensor) -> np.ndarray:
    """A NumPy view of a tensor (no copy; in-place updates stay visible). Inside a
    decoder's step a parameter's view is made once and kept (making one costs ~3 µs, a
    block reads ten or more), checked against the parameter's current storage."""
    views = getattr(_active, "views", None)
    if views is not None and isinstance(t, nn.Parameter):
        hit = views.get(id(t))
        if hit is None or hit[0] is not t or hit[1] != t.data_ptr():
            hit = views[id(t)] = (t, t.data_ptr(), t.detach().numpy())
        return hit[2]
    return t.detach().numpy() if t.requires_grad else t.numpy()


def bias_of(linear: nn.Linear) -> np.ndarray:
    if linear.bias is not None:
        return array(linear.bias)
    return decode.empty_bias(array(linear.weight).dtype)


def project(x: np.ndarray, linear: nn.Linear, out: np.ndarray | None = None) -> np.ndarray:
    """``linear(x)`` into a new array, or added into ``out`` (C-contiguous). ``x`` is made
    C-contiguous first: numba compiles ``decode.linear`` apart for strided arrays, whose
    sums round differently, and a strided view of several rows is contiguous for one row,
    which would make a row's result depend on the batch."""
    x = np.ascontiguousarray(x)
    w = array(linear.weight)
    if out is None:
        out = np.empty((x.shape[0], w.shape[0]), dtype=x.dtype)
        decode.linear(x, w, bias_of(linear), out, False)
    else:
        if not out.flags.c_contiguous:
            raise ValueError("project adds into a C-contiguous array only")
        decode.linear(x, w, bias_of(linear), out, True)
    return out


def _load_steppers() -> None:
    """Import every other module of this package: each registers its family's steppers."""
    for module in pkgutil.iter_modules(_PACKAGE_PATH):
        if module.name != "decoder":
            importlib.import_module(f"statewise.infer.fused.{module.name}")


def why_not_fusable(model: nn.Module) -> str | None:
    """None when :class:`FusedDecoder` can run ``model``, else the reason it cannot."""
    _load_steppers()
    if not isinstance(model, LanguageModel):
        return "only language models decode"
    if getattr(model, "rmt", None) is not None:
        return "a Recurrent Memory Transformer (model.memory_tokens) has no fused step"
    params = list(model.parameters())
    dtypes = {p.dtype for p in params}
    if len(dtypes) != 1 or dtypes.pop() not in (torch.float32, torch.float64):
        return "the weights are not all float32 or all float64"
    if any(p.device.type != "cpu" for p in params):
        return "the weights are not on the CPU"
    if type(model.embed) is not nn.Embedding or type(model.unembed) is not nn.Linear:
        return "the embedding or output layer is not a stock module (quantized?)"
    for i, block in enumerate(model.backbone.blocks):
        if type(block.mixer) not in STEPPERS:
            return f"block {i}'s mixer {type(block.mixer).__name__} has no fused step"
        if block.mlp is not None and any(
            type(m) is not nn.Linear for m in (block.mlp.up, block.mlp.down, block.mlp.gate) if m
        ):
            return f"block {i}'s MLP projections are not stock nn.Linear (quantized?)"
        for sub in block.mixer.modules():
            if isinstance(sub, nn.Linear) and type(sub) is not nn.Linear:
                return f"block {i}'s mixer has non-stock projections (quantized?)"
    return None


def fused_layer_names() -> list[str]:
    """The registered layers whose mixer has a fused step."""
    _load_steppers()
    return [name for name in layers.names() if layers.info(name).cls in STEPPERS]


def fusable(model: nn.Module) -> bool:
    return why_not_fusable(model) is None


class _Norm:
    """LayerNorm, RMSNorm or RMSNormPlusOne of a block, as ``decode.norm``'s arguments."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.centred = isinstance(module, nn.LayerNorm)
        eps = module.eps
        dtype = array(next(module.parameters())).dtype
        self.eps = float(eps if eps is not None else np.finfo(dtype).eps)
        width = next(module.parameters()).shape[-1]
        self.ones, self.zeros = np.ones(width, dtype), np.zeros(width, dtype)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        m = self.module
        if isinstance(m, RMSNormPlusOne):
            w = 1 + array(m.weight)
        else:
            w = array(m.weight) if m.weight is not None else self.ones
        bias = array(m.bias) if self.centred and m.bias is not None else self.zeros
        out = np.empty_like(x)
        decode.norm(x, w, bias, self.eps, self.centred, out)
        return out


class _BlockStep:
    def __init__(self, block: Block) -> None:
        self.norm_1 = _Norm(block.norm_1)
        self.mixer = STEPPERS[type(block.mixer)](block.mixer)
        self.mlp: MLP | None = block.mlp
        self.norm_2 = _Norm(block.norm_2) if block.mlp is not None else None

    def __call__(self, x: np.ndarray, state: State) -> State:
        state = self.mixer(self.norm_1(x), state, x)
        if self.mlp is not None:
            u = self.norm_2(x)
            up = project(u, self.mlp.up)
            gate = project(u, self.mlp.gate) if self.mlp.gate is not None else up
            act = np.empty_like(up)
            decode.mlp_activation(up, gate, decode.MLP_KINDS[self.mlp.kind], act)
            project(act, self.mlp.down, x)
        return state


class FusedDecoder:
    """``model.step`` for a :func:`fusable` language model, in numba kernels.

    ``step(ids, state)`` returns what ``model.step`` returns (logits (B, V) as a tensor and
    the new state) to float32 rounding; each row's arithmetic is independent of the
    others. numba runs with as many threads as torch is set to use."""

    def __init__(self, model: LanguageModel) -> None:
        reason = why_not_fusable(model)
        if reason is not None:
            raise ArgumentError(f"no fused decode step for this model: {reason}")
        self.model = model
        self._views: dict[int, tuple[torch.Tensor, int, np.ndarray]] = {}
        self.blocks = [_BlockStep(b) for b in model.backbone.blocks]
        self.final_norm = _Norm(model.backbone.norm)
        # what one row of a state looks like: the kernels index rows without bounds checks,
        # so a state is checked against this before any of them runs
        self._row = model.init_state(1)

    @torch.no_grad()
    def step(
        self, ids: torch.Tensor, state: list[State], in_place: bool = False
    ) -> tuple[torch.Tensor, list[State]]:
        """ids (B,) and the model's state -> (logits (B, V), new state). With ``in_place``
        the given state's tensors are updated and returned (the engine's gathered copy);
        otherwise they are left as they were."""
        if self.model.training:
            raise ArgumentError("the fused decode step runs in eval mode (no dropout)")
        self.model._check_ids(ids, rank=1)
        self._check_state(state, len(ids), in_place)
        if not in_place:
            state = tree_map(lambda t: t.clone(memory_format=torch.contiguous_format), state)
        config = self.model.config
        with self.running():
            x = array(self.model.embed.weight)[ids.numpy()]
            if config.embed_scale != 1.0:
                x = x * x.dtype.type(config.embed_scale)
            new_state = [block(x, s) for block, s in zip(self.blocks, state)]
            logits = project(self.final_norm(x), self.model.unembed)
        if config.logit_softcap > 0:
            cap = logits.dtype.type(config.logit_softcap)
            logits = cap * np.tanh(logits / cap)
        return torch.from_numpy(logits), new_state

    def _check_state(self, state: list[State], rows: int, in_place: bool) -> None:
        """ArgumentError unless ``state`` has the model's structure, ``rows`` rows of the
        model's shapes and dtypes, on the CPU (and C-contiguous when stepped in place)."""
        if not isinstance(state, (list, tuple)) or len(state) != len(self.blocks):
            raise ArgumentError("state must be the model's state (model.init_state(B))")
        try:
            pairs: list = []
            tree_map(lambda t, ref: pairs.append((t, ref)) or ref, state, self._row)
            complete = len(pairs) == len(tree_leaves(state)) == len(tree_leaves(self._row))
        except (TypeError, KeyError, IndexError, ValueError):
            complete = False
        if not complete or not all(isinstance(ref, torch.Tensor) for _, ref in pairs):
            raise ArgumentError("state must be the model's state (model.init_state(B))")
        for t, ref in pairs:
            if t.device.type != "cpu":
                raise ArgumentError("the fused decode step runs on CPU states only")
            shape = (rows, *ref.shape[1:])
            if t.shape != shape or t.dtype != ref.dtype:
                raise ArgumentError(
                    f"a state tensor is {tuple(t.shape)} {t.dtype}; this model and {rows} ids "
                    f"need {shape} {ref.dtype}"
                )
            if in_place and not t.is_contiguous():
                raise ArgumentError("a state stepped in place must be contiguous")

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """The context of a step: this decoder's parameter views (see :func:`array`), and
        numba with torch's thread count (capped by its pool), torch's count put back
        afterwards (numba's OpenMP layer shares the runtime and can change it:
        statewise.kernels.scan.torch_threads_kept). On a busy machine a parallel region
        waits for every one of its threads, so one thread (serve's default) is also the
        steadiest."""
        outer = getattr(_active, "views", None)
        _active.views = self._views
        try:
            with torch_threads_kept() as torch_threads:
                numba.set_num_threads(max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS)))
                yield
        finally:
            _active.views = outer
