"""The fused decode step: a language model's ``step`` as numba kernels, per row.

:class:`FusedDecoder` runs ``model.step(ids, state)`` for B rows with every block's norm,
mixer and MLP as a few numba calls (statewise.kernels.decode and one pointwise kernel per
layer family, in this package) on NumPy views of the model's own weights and states: no
PyTorch op, so no per-op dispatch, and every row's arithmetic is independent of the other
rows (batch-invariant tokens in float32 too). ``model.step`` is its twin and reference.
"""

from statewise.infer.fused.decoder import (
    FusedDecoder,
    fusable,
    fused_layer_names,
    why_not_fusable,
)

__all__ = ["FusedDecoder", "fusable", "fused_layer_names", "why_not_fusable"]
