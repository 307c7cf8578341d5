"""A saved ``torch.nn.LSTM``/``GRU``/``RNN`` state dict into a statewise checkpoint.

The architecture is read off the tensors: weight_ih_l{k} (G, I) and weight_hh_l{k} (G, P)
give the input size I and, with G = gates * H, the cell (4 gates: LSTM, 3: GRU, 1: RNN);
weight_hr_l{k} (P, H) marks an LSTM projection; *_reverse a bidirectional module; bias_*
the biases. The checkpoint's model is the drop-in (``statewise.layers.LSTM`` ...), which
``statewise.load`` returns.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from statewise.convert import ConversionError, save_converted
from statewise.models import ModelConfig, build_model

CELLS = {4: "lstm", 3: "gru", 1: "rnn"}


def config_from_state_dict(
    state: dict[str, torch.Tensor], nonlinearity: str = "tanh", batch_first: bool = False
) -> ModelConfig:
    layers = sorted({int(m.group(1)) for k in state if (m := re.fullmatch(r"weight_ih_l(\d+)", k))})
    if not layers or layers != list(range(len(layers))):
        raise ConversionError(
            "not a torch.nn.LSTM/GRU/RNN state dict: no weight_ih_l0, weight_ih_l1, ... tensors"
        )
    w_ih, w_hh = state["weight_ih_l0"], state.get("weight_hh_l0")
    if w_hh is None or w_ih.dim() != 2 or w_hh.dim() != 2:
        raise ConversionError("weight_ih_l0 and weight_hh_l0 must be matrices")
    w_hr = state.get("weight_hr_l0")
    hidden = w_hr.shape[1] if w_hr is not None else w_hh.shape[1]
    gates, rest = divmod(w_ih.shape[0], hidden)
    if rest or gates not in CELLS or (w_hr is not None and gates != 4):
        raise ConversionError(
            f"weight_ih_l0 has {w_ih.shape[0]} rows for hidden size {hidden}: "
            "not an LSTM (4H), GRU (3H) or RNN (H)"
        )
    kind = CELLS[gates]
    kwargs: dict = {
        "bias": "bias_ih_l0" in state,
        "batch_first": batch_first,
        "bidirectional": "weight_ih_l0_reverse" in state,
    }
    if kind == "lstm":
        kwargs["proj_size"] = w_hr.shape[0] if w_hr is not None else 0
    if kind == "rnn":
        kwargs["nonlinearity"] = nonlinearity
    return ModelConfig(
        layer=kind,
        head="rnn",
        d_model=hidden,
        n_layers=len(layers),
        input_dim=w_ih.shape[1],
        layer_kwargs=kwargs,
    )


def convert_torch(
    src: str | Path, out: str | Path, nonlinearity: str = "tanh", batch_first: bool = False
) -> ModelConfig:
    """Convert the state dict saved at ``src`` (``torch.save(module.state_dict(), src)``)."""
    src = Path(src)
    if not src.is_file():
        raise ConversionError(f"{src} is not a file")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a file it cannot read
        raise ConversionError(
            f"{src} cannot be read as a state dict (save "
            f"module.state_dict(), not the module): {err}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{src} does not hold a state dict of tensors")
    config = config_from_state_dict(state, nonlinearity, batch_first)
    model = build_model(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ConversionError(f"{src}: inconsistent tensors: {str(err).splitlines()[-1]}") from None
    save_converted(out, config, model, source=f"torch:{config.layer}")
    return config
