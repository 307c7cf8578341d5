"""statewise's mamba / mamba2 against transformers' Mamba and Mamba-2 (CPU "slow" torch path).

Weights go from the transformers module into ours (the mixers' parameter names are the
same; whole models go through statewise.convert.hf_mamba), and float32 outputs are
compared. Tolerance: both sides compute the same float32 sums in different orders (the
selective scan's N-sum, the chunked SSD against our chunks, the conv as a shifted sum
against conv1d), so they differ by rounding only: a few float32 ulps per operation,
accumulated over T = 19 steps and a few layers, measured at most 4e-7 relative to the
output scale; we allow 5e-6 (any wrong term would be O(1)).
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed")

from transformers import (  # noqa: E402
    Mamba2Config,
    Mamba2ForCausalLM,
    Mamba2Model,
    MambaConfig,
    MambaForCausalLM,
    MambaModel,
)
from transformers.models.mamba.modeling_mamba import MambaMixer  # noqa: E402
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer  # noqa: E402

import statewise.layers as L  # noqa: E402
from statewise.convert.hf_mamba import convert_mamba, convert_mamba2  # noqa: E402
from statewise.models import build_model  # noqa: E402

REL = 5e-6
B, T = 2, 19


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    scale = max(1.0, theirs.abs().max().item())
    err = (ours - theirs).abs().max().item()
    assert err <= REL * scale, f"max error {err:.3g} at output scale {scale:.3g}"


@torch.no_grad()
def perturb(module: torch.nn.Module, seed: int = 0, std: float = 0.1) -> None:
    """Move every parameter off its (often symmetric: D = 1, zero biases) initial value."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(std * torch.randn(p.shape, generator=g))


def inputs(width: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, T, width, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ mixers alone

MAMBA_CONFIGS = [
    dict(hidden_size=24, state_size=5, expand=3, conv_kernel=3, time_step_rank=4,
         use_bias=True, use_conv_bias=False),
    dict(hidden_size=20, state_size=7, expand=2, conv_kernel=4, time_step_rank="auto",
         use_bias=False, use_conv_bias=True, hidden_act="gelu"),
]  # fmt: skip


@pytest.mark.parametrize("options", MAMBA_CONFIGS)
@pytest.mark.parametrize("mode", ["recurrent", "scan"])
def test_mamba_layer_equals_mamba_mixer(options, mode):
    torch.manual_seed(0)
    config = MambaConfig(num_hidden_layers=1, **options)
    theirs = MambaMixer(config, layer_idx=0).eval()
    perturb(theirs)
    ours = L.get(
        "mamba",
        d_model=config.hidden_size,
        d_state=config.state_size,
        d_conv=config.conv_kernel,
        d_inner=config.intermediate_size,
        dt_rank=config.time_step_rank,
        bias=config.use_bias,
        conv_bias=config.use_conv_bias,
        activation=config.hidden_act,
        mode=mode,
    )
    ours.load_state_dict(theirs.state_dict())  # strict: the names and shapes are the same
    x = inputs(config.hidden_size)
    with torch.no_grad():
        assert_close(ours(x)[0], theirs(x))
        # token by token from our state equals their whole-sequence forward too
        state, ys = None, []
        for t in range(T):
            y_t, state = ours.step(x[:, t], state)
            ys.append(y_t)
        assert_close(torch.stack(ys, dim=1), theirs(x))


MAMBA2_CONFIGS = [
    dict(hidden_size=16, num_heads=8, head_dim=4, n_groups=2, state_size=6, conv_kernel=3,
         chunk_size=5, use_bias=True, time_step_limit=(0.01, 0.5), layer_norm_epsilon=1e-4),
    dict(hidden_size=12, num_heads=3, head_dim=12, expand=3, n_groups=3, state_size=4,
         conv_kernel=4, chunk_size=8, use_conv_bias=False, hidden_act="gelu"),
]  # fmt: skip


@pytest.mark.parametrize("options", MAMBA2_CONFIGS)
@pytest.mark.parametrize("mode", ["recurrent", "chunk"])
def test_mamba2_layer_equals_mamba2_mixer(options, mode):
    torch.manual_seed(0)
    config = Mamba2Config(num_hidden_layers=1, **options)
    theirs = Mamba2Mixer(config, layer_idx=0).eval()
    perturb(theirs)
    ours = L.get(
        "mamba2",
        d_model=config.hidden_size,
        d_state=config.state_size,
        d_conv=config.conv_kernel,
        d_inner=config.num_heads * config.head_dim,
        n_heads=config.num_heads,
        head_dim=config.head_dim,
        n_groups=config.n_groups,
        bias=config.use_bias,
        conv_bias=config.use_conv_bias,
        activation=config.hidden_act,
        norm_eps=config.layer_norm_epsilon,
        dt_limit=config.time_step_limit,
        chunk_size=4,  # not transformers' chunk size: the chunking must not matter
        mode=mode,
    )
    ours.load_state_dict(theirs.state_dict())
    x = inputs(config.hidden_size)
    with torch.no_grad():
        assert_close(ours(x)[0], theirs(x))


# ------------------------------------------------------------------ whole models


def converted(convert, model):
    """statewise's LanguageModel from a transformers model, through the converter."""
    config, state = convert(model.config.to_dict(), model.state_dict())
    ours = build_model(config).eval()
    ours.load_state_dict(state)  # strict
    return ours


def ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("tie", [True, False])
def test_mamba_for_causal_lm_logits(tie):
    torch.manual_seed(0)
    config = MambaConfig(
        vocab_size=37, hidden_size=24, state_size=6, num_hidden_layers=3, expand=3,
        conv_kernel=2, time_step_rank=3, use_bias=True, layer_norm_epsilon=1e-3,
        tie_word_embeddings=tie,
    )  # fmt: skip
    theirs = MambaForCausalLM(config).eval()
    perturb(theirs)
    ours = converted(convert_mamba, theirs)
    tokens = ids(config.vocab_size)
    with torch.no_grad():
        assert_close(ours(tokens), theirs(tokens).logits)


def test_mamba_model_hidden_states():
    torch.manual_seed(0)
    config = MambaConfig(vocab_size=29, hidden_size=16, state_size=4, num_hidden_layers=2)
    theirs = MambaModel(config).eval()
    perturb(theirs)
    ours = converted(convert_mamba, theirs)  # keys without "backbone.", tied head
    tokens = ids(config.vocab_size)
    with torch.no_grad():
        hidden, _ = ours.backbone(ours.embed(tokens))
        assert_close(hidden, theirs(tokens).last_hidden_state)


@pytest.mark.parametrize("tie", [False, True])
def test_mamba2_for_causal_lm_logits(tie):
    torch.manual_seed(0)
    config = Mamba2Config(
        vocab_size=41, hidden_size=16, num_heads=4, head_dim=8, n_groups=2, state_size=5,
        num_hidden_layers=2, conv_kernel=3, chunk_size=6, use_bias=tie,
        time_step_limit=(0.0, 0.3), layer_norm_epsilon=1e-4, tie_word_embeddings=tie,
    )  # fmt: skip
    theirs = Mamba2ForCausalLM(config).eval()
    perturb(theirs)
    ours = converted(convert_mamba2, theirs)
    tokens = ids(config.vocab_size)
    with torch.no_grad():
        assert_close(ours(tokens), theirs(tokens).logits)
        # generation state: step by step from our state gives the same last logits
        state, last = None, None
        for t in range(T):
            last, state = ours.step(tokens[:, t], state)
        assert_close(last, theirs(tokens).logits[:, -1])


def test_mamba2_model_hidden_states():
    torch.manual_seed(0)
    config = Mamba2Config(
        vocab_size=23, hidden_size=8, num_heads=2, head_dim=8, n_groups=1, state_size=4,
        num_hidden_layers=2, tie_word_embeddings=True,
    )  # fmt: skip
    theirs = Mamba2Model(config).eval()
    perturb(theirs)
    ours = converted(convert_mamba2, theirs)
    tokens = ids(config.vocab_size)
    with torch.no_grad():
        hidden, _ = ours.backbone(ours.embed(tokens))
        assert_close(hidden, theirs(tokens).last_hidden_state)
