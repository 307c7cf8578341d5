"""Weights in bfloat16 or int8 for serving (``statewise serve --dtype``).

:func:`quantize_for_serving` swaps a model's projections, in place, for modules that store
their weights in fewer bytes and compute in float32 around them:

- ``"float32"``: the model unchanged.
- ``"bfloat16"``: every ``nn.Linear`` (the blocks' projections and MLPs, the output layer)
  becomes a :class:`BF16Linear` and every ``nn.Embedding`` a :class:`BF16Embedding`: the
  weights are stored in bfloat16 and the GEMM runs in bfloat16 (activations rounded to
  bfloat16, the output returned in the activation's dtype with a float32 bias added).
  Everything else (norms, convolutions, the recurrences, the states, the classic cells'
  own weight matrices) stays as it was, so a state is float32 as under
  ``torch.autocast`` in training (docs/training.md, "bfloat16"), and no autocast context
  is needed around ``model.step`` or ``model(...)``. Autocast with float32 weights was
  not chosen: it casts every weight at every call, 2-4x slower than float32 at batch 1.
- ``"int8"``: every ``nn.Linear`` becomes an :class:`Int8Linear`: weight-only int8 with
  one symmetric scale per output channel (``scale = max |w_row| / 127``, rounded up to a
  bfloat16 value, so ``q * scale`` is exact in float32 and ``|w - q * scale| <= scale/2``).
  The embedding stays float32 (a gather: one row per token is read).

The int8 matmul (:meth:`Int8Linear.forward`, ``kernel="auto"``) uses
``torch._weight_int8pack_mm`` on bfloat16 activations for up to :data:`INT8PACK_MAX_ROWS`
rows: a GEMV that reads the int8 weight directly, 1.1-1.5x float32's speed at one row
here. It is used only where in_features is a multiple of 16, since torch 2.13's CPU
kernel crashes the process otherwise. Above that many rows, the int8 weight is converted
to bfloat16 for a bfloat16 GEMM whose output is scaled per channel (the int8pack kernel's
time grows linearly with rows, so the GEMM wins past about 12 rows). With float32
activations ``_weight_int8pack_mm`` is 6-40x slower than float32 on this CPU, so it is
never used so. ``kernel="float32"`` is the exact reference path: the dequantized weight
in a float32 GEMM.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from statewise.errors import ArgumentError, ArgumentTypeError

SERVING_DTYPES = ("float32", "bfloat16", "int8")
Int8Kernel = Literal["auto", "int8pack", "bf16", "float32"]
INT8_KERNELS = ("auto", "int8pack", "bf16", "float32")
# Rows (batch x time) up to which kernel "auto" runs torch._weight_int8pack_mm; measured
# with `python -m statewise.bench.quantize --matmul` (crossover between 8 and 16 rows).
INT8PACK_MAX_ROWS = 8

_HAS_INT8PACK = hasattr(torch, "_weight_int8pack_mm")


def serving_dtype_name(dtype: str | torch.dtype) -> str:
    """``dtype`` as one of SERVING_DTYPES ("float32", "bfloat16", "int8"); torch.float32,
    torch.bfloat16 and torch.int8 are accepted too. ArgumentError for anything else."""
    names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.int8: "int8"}
    if isinstance(dtype, torch.dtype):
        if dtype in names:
            return names[dtype]
    elif isinstance(dtype, str):
        if dtype in SERVING_DTYPES:
            return dtype
    else:
        raise ArgumentTypeError(
            f"dtype must be a string or a torch.dtype, got {type(dtype).__name__}"
        )
    raise ArgumentError(f"serving dtype must be one of {', '.join(SERVING_DTYPES)}, got {dtype!r}")


def int8_scales(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric scales of ``weight`` (out, in): the smallest bfloat16
    value >= max_j |w_ij| / 127 of each row, as float32 (1.0 for an all-zero row)."""
    amax = weight.detach().abs().amax(dim=1).float()
    exact = amax / 127.0
    scale = exact.to(torch.bfloat16)
    low = scale.float() < exact  # rounded down: step to the next bfloat16 up
    bits = scale.view(torch.int16)
    scale = torch.where(low, bits + 1, bits).view(torch.bfloat16).float()
    return torch.where(amax > 0, scale, torch.ones_like(scale))


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` (out, in) -> (q int8 (out, in), scale float32 (out,)) with
    ``q = round(w / scale)`` in [-127, 127] and the scale of :func:`int8_scales`."""
    if weight.dim() != 2:
        raise ArgumentError(f"int8 weights must be 2-D (out, in), got shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise ArgumentError("cannot quantize a weight holding NaN or infinite values")
    scale = int8_scales(weight)
    q = torch.round(weight.detach().float() / scale[:, None]).clamp_(-127, 127)
    return q.to(torch.int8).contiguous(), scale


class Int8Linear(nn.Module):
    """A Linear layer with its weight as int8 and a float32 scale per output channel:
    y = x @ (q * scale).T + bias, in the input's dtype (see the module doc for the
    kernels). The bias stays in its own dtype."""

    def __init__(
        self,
        q: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
        kernel: Int8Kernel = "auto",
    ) -> None:
        super().__init__()
        if q.dtype != torch.int8 or q.dim() != 2:
            raise ArgumentError("q must be a 2-D int8 tensor (out, in)")
        if scale.shape != (q.shape[0],):
            raise ArgumentError(f"scale must have shape ({q.shape[0]},), got {tuple(scale.shape)}")
        if kernel not in INT8_KERNELS:
            raise ArgumentError(f"kernel must be one of {', '.join(INT8_KERNELS)}, got {kernel!r}")
        self.in_features, self.out_features = q.shape[1], q.shape[0]
        # torch 2.13's CPU _weight_int8pack_mm crashes the process (SIGSEGV) unless
        # in_features is a multiple of 16, so it is used only then.
        self.int8pack = _HAS_INT8PACK and self.in_features % 16 == 0
        if kernel == "int8pack" and not self.int8pack:
            raise ArgumentError(
                "kernel int8pack needs torch._weight_int8pack_mm and in_features a multiple "
                f"of 16, got in_features {self.in_features}"
            )
        self.kernel = kernel
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale.float())
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16))  # exact: see int8_scales
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: Int8Kernel = "auto") -> Int8Linear:
        q, scale = quantize_int8(linear.weight)
        return cls(q, scale, linear.bias, kernel)

    def dequantized(self) -> torch.Tensor:
        """The weight this layer multiplies by: q * scale, float32 (out, in)."""
        return self.weight.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out) in x's dtype."""
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        kernel = self.kernel
        if kernel == "auto":
            kernel = "int8pack" if self.int8pack and x2.shape[0] <= INT8PACK_MAX_ROWS else "bf16"
        if kernel == "int8pack":
            y = torch._weight_int8pack_mm(
                x2.to(torch.bfloat16).contiguous(), self.weight, self.scale_bf16
            ).to(x.dtype)
        elif kernel == "bf16":
            y = F.linear(x2.to(torch.bfloat16), self.weight.to(torch.bfloat16)).to(x.dtype)
            y = y * self.scale.to(x.dtype)
        else:
            y = F.linear(x2, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, kernel={self.kernel}"
        )


class BF16Linear(nn.Module):
    """A Linear layer with its weight stored in bfloat16: y = bf16(x) @ w.T (a bfloat16
    GEMM), returned in x's dtype, plus the bias in float32 (or x's dtype)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight.detach().to(torch.bfloat16))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out) in x's dtype."""
        y = F.linear(x.to(torch.bfloat16), self.weight).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bfloat16"


class BF16Embedding(nn.Module):
    """An embedding table stored in bfloat16; looked-up rows come back in ``out_dtype``."""

    def __init__(self, weight: torch.Tensor, padding_idx: int | None, out_dtype: torch.dtype):
        super().__init__()
        self.num_embeddings, self.embedding_dim = weight.shape
        self.padding_idx, self.out_dtype = padding_idx, out_dtype
        self.register_buffer("weight", weight.detach().to(torch.bfloat16))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) -> (..., embedding_dim) in out_dtype."""
        return F.embedding(ids, self.weight, self.padding_idx).to(self.out_dtype)


def quantize_for_serving(
    model: nn.Module, dtype: str | torch.dtype, int8_kernel: Int8Kernel = "auto"
) -> nn.Module:
    """Store ``model``'s projection weights in ``dtype`` ("float32", "bfloat16", "int8",
    or the matching torch dtypes) for inference, IN PLACE; returns the same model, in eval
    mode, with no gradients. See the module doc for what each dtype swaps. A weight shared
    by two modules (tied embeddings) is converted once and stays shared where both become
    bfloat16. ``int8_kernel`` sets every Int8Linear's kernel (tests and benchmarks)."""
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    name = serving_dtype_name(dtype)
    if int8_kernel not in INT8_KERNELS:
        raise ArgumentError(
            f"int8_kernel must be one of {', '.join(INT8_KERNELS)}, got {int8_kernel!r}"
        )
    model.eval().requires_grad_(False)
    if name == "float32":
        return model
    bf16: dict[int, torch.Tensor] = {}  # id(weight) -> its bfloat16 copy, shared

    def as_bf16(weight: torch.Tensor) -> torch.Tensor:
        if id(weight) not in bf16:
            bf16[id(weight)] = weight.detach().to(torch.bfloat16)
        return bf16[id(weight)]

    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in model.modules():
        for child_name, child in parent.named_children():
            new: nn.Module | None = None
            if isinstance(child, nn.Linear):
                if name == "int8":
                    new = Int8Linear.from_linear(child, int8_kernel)
                else:
                    new = BF16Linear(as_bf16(child.weight), child.bias)
                    new.weight = as_bf16(child.weight)  # the shared copy itself
            elif isinstance(child, nn.Embedding) and name == "bfloat16":
                new = BF16Embedding(as_bf16(child.weight), child.padding_idx, child.weight.dtype)
                new.weight = as_bf16(child.weight)
            if new is not None:
                swaps.append((parent, child_name, new))
    for parent, child_name, new in swaps:
        setattr(parent, child_name, new)
    model.serving_dtype = name
    return model


__all__ = [
    "BF16Embedding",
    "BF16Linear",
    "INT8PACK_MAX_ROWS",
    "Int8Linear",
    "SERVING_DTYPES",
    "int8_scales",
    "quantize_for_serving",
    "quantize_int8",
    "serving_dtype_name",
]
