"""Our rglru and attention layers, and whole Griffin models, against transformers' RecurrentGemma.

Weights go from the peer into ours unchanged: the layers use the peer's parameter names and
shapes (``ours.load_state_dict(peer_block.state_dict())``), whole models go through the
``recurrent_gemma`` converter. The configs are small, random and deliberately far from the
defaults (hidden sizes not a multiple of the lru width, MQA and GQA, odd head widths, partial
rotary fractions that rotate 2 or 4 features, conv width 1, 3 and 4, soft caps, both block
patterns, tied and separate heads); every parameter, biases and norm weights included, is
perturbed off its init. Sequences are shorter and longer than the attention window.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers", reason="peer package transformers is not installed")

from transformers import DynamicCache, RecurrentGemmaConfig, RecurrentGemmaForCausalLM  # noqa: E402

import statewise.layers as L  # noqa: E402
from statewise.convert import HF_CONVERTERS  # noqa: E402
from statewise.models import build_model  # noqa: E402

CONFIGS = {
    "gqa1-sep-head": dict(
        num_hidden_layers=3,
        vocab_size=61,
        hidden_size=24,
        intermediate_size=40,
        num_attention_heads=3,
        num_key_value_heads=1,
        lru_width=30,
        attention_window_size=5,
        conv1d_width=3,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        partial_rotary_factor=0.25,
        logits_soft_cap=7.0,
        block_types=["recurrent", "attention"],
        attention_bias=True,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
    ),
    "attention-first": dict(
        num_hidden_layers=4,
        vocab_size=50,
        hidden_size=16,
        intermediate_size=48,
        num_attention_heads=2,
        lru_width=16,
        attention_window_size=8,
        conv1d_width=4,
        logits_soft_cap=30.0,
        block_types=["attention", "recurrent", "recurrent"],
    ),
    "odd-heads-conv1": dict(
        num_hidden_layers=3,
        vocab_size=40,
        hidden_size=20,
        intermediate_size=30,
        num_attention_heads=4,
        num_key_value_heads=2,
        lru_width=12,
        attention_window_size=3,
        conv1d_width=1,
        rope_parameters={"rope_type": "default", "rope_theta": 100.0},
        partial_rotary_factor=0.6,  # head width 5: floor(3.0) = 3 -> 2 frequencies, 4 features
        logits_soft_cap=3.0,
        hidden_activation="gelu_new",
    ),
}

# float32 on both sides. The two compute the same function; measured differences are at
# most 3.6e-7 of the output scale (layers 1.5e-7, whole models 3.6e-7), from rounding only:
# our rotary angles are taken in float64, 1 - a^2 is computed as -expm1(2 log a) instead of
# 1 - exp(2 log a), summation orders differ. 5e-6 of the scale leaves a 14x margin and still
# catches any wrong term, which is O(1e-2) or more.
REL = 5e-6


def assert_close(ours: torch.Tensor, peer: torch.Tensor) -> None:
    scale = max(1.0, peer.abs().max().item())
    err = (ours - peer).abs().max().item()
    assert err <= REL * scale, f"max error {err:.3g} at output scale {scale:.3g}"


def peer_model(name: str, seed: int = 0, window: int | None = None) -> RecurrentGemmaForCausalLM:
    torch.manual_seed(seed)
    settings = dict(CONFIGS[name])
    if window is not None:
        settings["attention_window_size"] = window
    model = RecurrentGemmaForCausalLM(RecurrentGemmaConfig(**settings)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def lengths(config: RecurrentGemmaConfig) -> tuple[int, int]:
    """One length below the attention window, one well above it."""
    return max(2, config.attention_window_size - 1), 2 * config.attention_window_size + 5


def first_block(model: RecurrentGemmaForCausalLM, kind: str) -> tuple[int, torch.nn.Module]:
    for i, layer in enumerate(model.model.layers):
        if kind == "recurrent" and hasattr(layer.temporal_block, "rg_lru"):
            return i, layer.temporal_block
        if kind == "attention" and hasattr(layer.temporal_block, "q_proj"):
            return i, layer.temporal_block
    raise AssertionError(f"no {kind} block")


# ------------------------------------------------------------------- layers


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_rglru_layer_equals_recurrent_block(name):
    model = peer_model(name)
    config = model.config
    _, peer = first_block(model, "recurrent")
    ours = L.get(
        "rglru",
        d_model=config.hidden_size,
        lru_width=config.lru_width,
        n_heads=config.num_attention_heads,
        conv_width=config.conv1d_width,
    )
    ours.load_state_dict(peer.state_dict())  # same names and shapes, strict
    g = torch.Generator().manual_seed(1)
    for seq_len in lengths(config):
        x = torch.randn(2, seq_len, config.hidden_size, generator=g)
        positions = torch.arange(seq_len)[None].expand(2, -1)
        with torch.no_grad():
            want, _ = peer(x, positions, None, use_cache=False)
            for mode in ours.modes:
                ours.mode = mode
                got, _ = ours(x)
                assert_close(got, want)
            # the peer's cache path: a prefill of 2 tokens, then one token at a time
            peer.conv1d_state = None
            steps = [peer(x[:, :2], positions[:, :2], None, use_cache=True)[0]]
            for t in range(2, seq_len):
                steps.append(peer(x[:, t : t + 1], positions[:, t : t + 1], None)[0])
            assert_close(torch.cat(steps, dim=1), got)


@pytest.mark.parametrize("name", [*sorted(CONFIGS), "window-1"])
def test_attention_layer_equals_recurrentgemma_attention(name):
    if name == "window-1":  # an empty KV cache (B, 0, H_kv, d): each token sees only itself
        model = peer_model("gqa1-sep-head", window=1)
    else:
        model = peer_model(name)
    config = model.config
    _, peer = first_block(model, "attention")
    ours = L.get(
        "attention",
        d_model=config.hidden_size,
        n_heads=config.num_attention_heads,
        n_kv_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        window=config.attention_window_size,
        rotary_fraction=config.rope_parameters["partial_rotary_factor"],
        rope_theta=config.rope_parameters["rope_theta"],
        qkv_bias=config.attention_bias,
        out_bias=True,
    )
    ours.load_state_dict(peer.state_dict())
    g = torch.Generator().manual_seed(2)
    window = config.attention_window_size
    for seq_len in lengths(config):
        x = torch.randn(2, seq_len, config.hidden_size, generator=g)
        q, k = torch.arange(seq_len)[:, None], torch.arange(seq_len)[None, :]
        allowed = ((k <= q) & (k > q - window))[None, None]  # transformers' sliding window
        with torch.no_grad():
            want, _ = peer(x, torch.arange(seq_len)[None].expand(2, -1), allowed)
            for mode in ours.modes:
                ours.mode = mode
                got, _ = ours(x)
                assert_close(got, want)
            steps, state = [], None
            for t in range(seq_len):
                y_t, state = ours.step(x[:, t], state)
                steps.append(y_t)
            assert_close(torch.stack(steps, dim=1), want)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("kind", ["recurrent", "attention"])
def test_padded_batch_equals_peer_on_each_sequence(kind, side):
    """A padded batch with a mask through our layer (fresh state, so each row starts a
    document at its first real token) equals the peer on each unpadded sequence."""
    model = peer_model("gqa1-sep-head")
    config = model.config
    _, peer = first_block(model, kind)
    if kind == "recurrent":
        ours = L.get("rglru", d_model=24, lru_width=30, n_heads=3, conv_width=3)
    else:
        ours = L.get(
            "attention",
            d_model=24,
            n_heads=3,
            n_kv_heads=1,
            window=5,
            rotary_fraction=0.25,
            rope_theta=500.0,
            qkv_bias=True,
            out_bias=True,
        )
    ours.load_state_dict(peer.state_dict())
    lengths, seq_len = (12, 7, 2), 12
    g = torch.Generator().manual_seed(5)
    x = 3 * torch.randn(len(lengths), seq_len, config.hidden_size, generator=g)
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.bool)
    for row, n in enumerate(lengths):
        mask[row, :n] = True
    if side == "left":
        mask = mask.flip(1)
    for mode in ours.modes:
        ours.mode = mode
        with torch.no_grad():
            y, _ = ours(x, mask=mask)
            for row, n in enumerate(lengths):
                alone = x[row : row + 1, mask[row]]
                positions = torch.arange(n)[None]
                if kind == "recurrent":
                    want, _ = peer(alone, positions, None, use_cache=False)
                else:
                    q, k = positions[0, :, None], positions[0, None, :]
                    allowed = ((k <= q) & (k > q - config.attention_window_size))[None, None]
                    want, _ = peer(alone, positions, allowed)
                assert_close(y[row : row + 1, mask[row]], want)


# -------------------------------------------------------------- whole model


def converted(model: RecurrentGemmaForCausalLM) -> torch.nn.Module:
    config_json = json.loads(model.config.to_json_string())
    cfg, state = HF_CONVERTERS["recurrent_gemma"](config_json, model.state_dict())
    ours = build_model(cfg).eval()
    ours.load_state_dict(state)
    return ours


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_model_logits_equal_recurrent_gemma(name):
    model = peer_model(name)
    ours = converted(model)
    assert ours.config.embed_scale == torch.tensor(model.config.hidden_size**0.5).bfloat16()
    g = torch.Generator().manual_seed(3)
    for seq_len in lengths(model.config):
        ids = torch.randint(0, model.config.vocab_size, (2, seq_len), generator=g)
        with torch.no_grad():
            assert_close(ours(ids), model(ids, use_cache=False).logits)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_model_decoding_equals_recurrent_gemma_cache(name):
    """The peer's prefill + one-token decoding with its cache, against our prefill + step."""
    model = peer_model(name)
    ours = converted(model)
    _, seq_len = lengths(model.config)
    ids = torch.randint(0, model.config.vocab_size, (2, seq_len), generator=torch.manual_seed(4))
    prompt = 3
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        positions = torch.arange(seq_len)[None].expand(2, -1)
        want = [
            model(ids[:, :prompt], position_ids=positions[:, :prompt], past_key_values=cache).logits
        ]
        for t in range(prompt, seq_len):
            out = model(
                ids[:, t : t + 1], position_ids=positions[:, t : t + 1], past_key_values=cache
            )
            want.append(out.logits)
        logits, state = ours(ids[:, :prompt], return_state=True)
        got = [logits]
        for t in range(prompt, seq_len):
            step, state = ours.step(ids[:, t], state)
            got.append(step[:, None])
    assert_close(torch.cat(got, dim=1), torch.cat(want, dim=1))


# ------------------------------------------------------------------ presets


def test_griffin_and_hawk_presets_are_recurrent_gemma():
    """The presets at RecurrentGemma-2B's sizes are what the converter makes of its config
    (up to the embedding scale, which transformers rounds to bfloat16)."""
    from statewise.convert.hf_recurrentgemma import model_config
    from statewise.models.presets import griffin, hawk

    sizes = dict(num_hidden_layers=26, vocab_size=256000, hidden_size=2560)
    for preset, blocks in ((griffin, None), (hawk, ["recurrent"])):
        config = RecurrentGemmaConfig(
            **sizes, intermediate_size=15360, num_key_value_heads=1, num_attention_heads=10
        )
        if blocks:
            config.block_types = blocks
        converted_cfg = model_config(json.loads(config.to_json_string()))
        ours = preset(2560, 26, 256000)
        assert abs(ours.embed_scale - converted_cfg.embed_scale) <= ours.embed_scale * 2**-8
        converted_cfg.embed_scale = ours.embed_scale
        assert converted_cfg == ours
