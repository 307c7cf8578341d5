"""statewise's mamba layer against mambapy's MambaBlock (alxndrTL/mamba.py), copied weights.

mambapy's MambaBlock has the parameter names and shapes of ours (in_proj, conv1d, x_proj,
dt_proj, A_log, D, out_proj), so its state dict loads as it is. Its cache for step() is
(h (B, E, N), inputs (B, E, K-1)); ours is {"ssm": h, "conv": inputs transposed to
(B, K-1, E)}. mambapy's ``inner_layernorms`` (Jamba's RMSNorms on dt, B, C) has no
counterpart in ours and is not tested.

Tolerance: float32 on both sides, the same sums in different orders (mambapy's pscan is a
Blelloch scan over a length padded to a power of 2; ours a loop or a Hillis-Steele scan),
so they differ by rounding only; measured at most 1.2e-7 relative to the output scale, and we
allow 5e-6 (a wrong term would be O(1)).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("mambapy", reason="peer package mambapy is not installed")

from mambapy.mamba import Mamba as PeerMamba  # noqa: E402
from mambapy.mamba import MambaBlock, MambaConfig  # noqa: E402

import statewise.layers as L  # noqa: E402
from statewise.models import ModelConfig, build_model  # noqa: E402

REL = 5e-6
B, T = 3, 21  # T not a power of two: mambapy pads its parallel scan


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    scale = max(1.0, theirs.abs().max().item())
    err = (ours - theirs).abs().max().item()
    assert err <= REL * scale, f"max error {err:.3g} at output scale {scale:.3g}"


def peer_config(**overrides) -> MambaConfig:
    options = dict(d_model=16, n_layers=1, d_state=6, expand_factor=2, d_conv=3, dt_rank=3,
                   bias=True, conv_bias=True)  # fmt: skip
    options.update(overrides)
    return MambaConfig(**options)


def our_layer(config: MambaConfig, **kwargs) -> L.SequenceMixer:
    return L.get(
        "mamba",
        d_model=config.d_model,
        d_state=config.d_state,
        d_conv=config.d_conv,
        d_inner=config.d_inner,
        dt_rank=config.dt_rank,
        bias=config.bias,
        conv_bias=config.conv_bias,
        **kwargs,
    )


@torch.no_grad()
def perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module


def inputs(width: int) -> torch.Tensor:
    return torch.randn(B, T, width, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("pscan", [True, False])
@pytest.mark.parametrize("mode", ["recurrent", "scan"])
@pytest.mark.parametrize(
    "overrides", [{}, dict(bias=False, conv_bias=False, d_conv=4, dt_rank="auto", d_state=3)]
)
def test_forward_equals_mamba_block(pscan, mode, overrides):
    torch.manual_seed(0)
    config = peer_config(pscan=pscan, **overrides)
    theirs = perturbed(MambaBlock(config))
    ours = our_layer(config, mode=mode)
    ours.load_state_dict(theirs.state_dict())  # strict: same names and shapes
    x = inputs(config.d_model)
    with torch.no_grad():
        assert_close(ours(x)[0], theirs(x))


def test_step_and_cache_equal_mamba_block():
    torch.manual_seed(0)
    config = peer_config()
    theirs = perturbed(MambaBlock(config))
    ours = our_layer(config)
    ours.load_state_dict(theirs.state_dict())
    x = inputs(config.d_model)
    cache = (None, torch.zeros(B, config.d_inner, config.d_conv - 1))
    state = None
    with torch.no_grad():
        for t in range(T):
            y_theirs, cache = theirs.step(x[:, t], cache)
            y_ours, state = ours.step(x[:, t], state)
            assert_close(y_ours, y_theirs)
        h, window = cache
        assert_close(state["ssm"], h)
        assert_close(state["conv"], window.transpose(1, 2))
        # and the whole-sequence forward ends in the same state
        _, final = ours(x)
        assert_close(final["ssm"], h)


def test_residual_stack_equals_mambapy_mamba():
    """mambapy's Mamba (ResidualBlocks: x + mixer(RMSNorm(x))) against our blocks."""
    torch.manual_seed(0)
    config = peer_config(n_layers=3, rms_norm_eps=1e-4)
    theirs = perturbed(PeerMamba(config))
    model = build_model(
        ModelConfig(
            layer="mamba",
            d_model=config.d_model,
            n_layers=config.n_layers,
            vocab_size=10,
            mlp_ratio=0.0,
            norm="rmsnorm",
            norm_eps=config.rms_norm_eps,
            layer_kwargs=dict(
                d_state=config.d_state, d_conv=config.d_conv, dt_rank=config.dt_rank, bias=True
            ),
        )
    )
    state = {}
    for key, value in theirs.state_dict().items():  # layers.{i}.mixer.* / layers.{i}.norm.*
        key = key.replace("layers.", "blocks.").replace(".norm.", ".norm_1.")
        state[key] = value
    missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    assert not unexpected and missing == ["norm.weight"]  # our final norm; unused below
    x = inputs(config.d_model)
    with torch.no_grad():
        h = x
        for block in model.backbone.blocks:
            h, _ = block(h)
        assert_close(h, theirs(x))
