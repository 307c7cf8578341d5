from __future__ import annotations

import pytest
import tomllib
import torch

import statewise
from statewise.models import ClassifierHead, ForecastHead, LanguageModel, ModelConfig
from statewise.models.sampling import sample_next
from statewise.train import checkpoint
from statewise.train.config import RunConfig, config_from_dict, load_config


def tiny_lm(layer: str = "mingru", **kw) -> LanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(layer=layer, d_model=16, n_layers=2, vocab_size=32, **kw)
    return LanguageModel(config).double().eval()


@pytest.mark.parametrize("layer", statewise.layers.names())
def test_stepping_the_whole_model_equals_its_forward(layer):
    model = tiny_lm(layer)
    ids = torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(1))
    logits, state = model(ids[:, :4], return_state=True)
    steps = []
    for t in range(4, 9):
        out, state = model.step(ids[:, t], state)
        steps.append(out)
    full = model(ids)
    torch.testing.assert_close(logits, full[:, :4])
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 4:])


def test_first_loss_is_near_uniform():
    model = tiny_lm().float()
    ids = torch.randint(0, 32, (4, 16))
    loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
    assert abs(loss.item() - torch.log(torch.tensor(32.0)).item()) < 0.5


def test_greedy_generation_equals_argmax_of_full_forwards():
    model = tiny_lm()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    seen = []
    out = model.generate(prompt, 6, temperature=0, on_token=seen.append)
    expected = prompt
    for _ in range(6):
        nxt = model(expected)[:, -1].argmax(-1, keepdim=True)
        expected = torch.cat([expected, nxt], dim=1)
    assert torch.equal(out, expected)
    assert len(seen) == 6 and torch.equal(torch.stack(seen, 1), out[:, 3:])


def test_sampling_is_seeded_and_respects_top_k_and_top_p():
    model = tiny_lm()
    prompt = torch.tensor([[1, 2, 3]])
    a = model.generate(prompt, 20, temperature=1.0, seed=5)
    b = model.generate(prompt, 20, temperature=1.0, seed=5)
    c = model.generate(prompt, 20, temperature=1.0, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = model.generate(prompt, 10, temperature=0)
    assert torch.equal(model.generate(prompt, 10, top_k=1, seed=1), greedy)
    assert torch.equal(model.generate(prompt, 10, top_p=1e-6, seed=1), greedy)

    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0, 1.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    drawn = sample_next(logits, 1.0, top_k=2, generator=g)
    assert set(drawn.tolist()) == {1, 2}
    probs = logits[0].softmax(-1)
    # top_p = 0.6 keeps token 1 (p 0.45) and token 2 (p 0.41), whose sum first reaches 0.6
    assert probs[1] < 0.6 < probs[1] + probs[2]
    drawn = sample_next(logits, 1.0, top_p=0.6, generator=g)
    assert set(drawn.tolist()) == {1, 2}


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(max_new_tokens=3, temperature=-0.5), "temperature"),
        (dict(max_new_tokens=3, top_k=0), "top_k"),
        (dict(max_new_tokens=3, top_p=0.0), "top_p"),
    ],
)
def test_generate_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_lm().generate(torch.tensor([[1]]), **kwargs)


def test_generate_rejects_empty_and_out_of_vocabulary_prompts():
    model = tiny_lm()
    with pytest.raises(ValueError, match="prompt is empty"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 32\)"):
        model.generate(torch.tensor([[40]]), 3)


def test_classifier_reads_the_last_real_token():
    torch.manual_seed(0)
    model = ClassifierHead(
        ModelConfig(
            layer="gru", d_model=8, n_layers=1, vocab_size=10, head="classifier", n_classes=3
        )
    ).double()
    ids = torch.randint(0, 10, (2, 7))
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    padded = model(ids, mask)
    assert padded.shape == (2, 3)
    torch.testing.assert_close(padded[1], model(ids[1:, :4])[0])
    torch.testing.assert_close(padded[0], model(ids[:1])[0])


def test_forecaster_shapes_and_errors():
    model = ForecastHead(
        ModelConfig(layer="gru", d_model=8, n_layers=1, head="forecaster", input_dim=3, horizon=5)
    )
    assert model(torch.randn(4, 20, 3)).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.randn(4, 20, 2))


def test_config_errors():
    with pytest.raises(ValueError, match="unknown layer"):
        ModelConfig(layer="transformer-xl")
    with pytest.raises(ValueError, match="n_classes"):
        ModelConfig(head="classifier")


def test_embedding_init_follows_the_first_layer_unless_set():
    torch.manual_seed(0)
    mamba = LanguageModel(ModelConfig(layer="mamba", d_model=64, vocab_size=512))
    assert (mamba.config.embed_std, mamba.config.tie_embeddings) == (0.02, True)
    assert mamba.unembed.weight is mamba.embed.weight
    assert abs(mamba.embed.weight.std().item() - 0.02) < 0.0004  # 32,768 draws: sd ~8e-5
    attention = LanguageModel(ModelConfig(layer="attention", d_model=64, vocab_size=512))
    assert (attention.config.embed_std, attention.config.tie_embeddings) == (1.0, False)
    assert attention.unembed.weight is not attention.embed.weight
    assert abs(attention.embed.weight.std().item() - 1.0) < 0.02  # sd of the estimate ~0.004
    hybrid = ModelConfig(layer="attention", layers=["rglru", "attention"], vocab_size=512)
    assert (hybrid.embed_std, hybrid.tie_embeddings) == (0.02, True)  # block 0 is rglru
    chosen = ModelConfig(layer="attention", embed_std=0.1, tie_embeddings=True)
    assert (chosen.embed_std, chosen.tie_embeddings) == (0.1, True)
    with pytest.raises(ValueError, match="embed_std"):
        ModelConfig(embed_std=0.0)


def test_classifier_token_embedding_follows_embed_std():
    torch.manual_seed(0)
    for layer, std in (("mamba", 0.02), ("attention", 1.0)):
        config = ModelConfig(
            layer=layer, d_model=64, vocab_size=512, head="classifier", n_classes=3
        )
        embed = ClassifierHead(config).embed.weight
        assert abs(embed.std().item() - std) < 0.02 * std  # 32,768 draws: sd ~0.004 std


def test_checkpoint_records_the_resolved_embedding_init(tmp_path):
    """A saved config keeps the values a model was built with, even if the layer's own
    choice were to change later."""
    config = config_from_dict({"model": {"layer": "attention", "d_model": 16}})
    assert (config.model.embed_std, config.model.tie_embeddings) == (1.0, False)
    path = tmp_path / "config.toml"
    path.write_text(config.to_toml())
    raw = tomllib.loads(path.read_text())["model"]
    assert (raw["embed_std"], raw["tie_embeddings"]) == (1.0, False)
    assert load_config(path).model == config.model


def test_load_returns_the_saved_model(tmp_path):
    config = RunConfig()
    config.model = ModelConfig(
        layer="retnet", d_model=16, n_layers=1, vocab_size=256, layer_kwargs={"n_heads": 2}
    )
    torch.manual_seed(0)
    model = LanguageModel(config.model)
    checkpoint.save(tmp_path / "ckpt", config, model, {"step": 0}, [])
    loaded = statewise.load(tmp_path / "ckpt")
    ids = torch.randint(0, 256, (2, 10))
    torch.testing.assert_close(loaded(ids), model.eval()(ids), rtol=0, atol=0)
    assert isinstance(loaded, LanguageModel) and not loaded.training


def test_layer_pattern_and_per_layer_kwargs():
    config = ModelConfig(
        layer="gru",
        layers=["gru", "retnet"],
        n_layers=3,
        d_model=8,
        vocab_size=16,
        layer_kwargs={"retnet": {"n_heads": 2}, "gru": {"hidden_size": 4}},
    )
    model = LanguageModel(config)
    kinds = [type(b.mixer).__name__ for b in model.backbone.blocks]
    assert kinds == ["GRUMixer", "Retention", "GRUMixer"]
    assert model.backbone.blocks[1].mixer.n_heads == 2
    assert model.backbone.blocks[0].mixer.hidden_size == 4
    with pytest.raises(ValueError, match="layer 'gru' has no argument 'chunk_size'"):
        ModelConfig(layer="gru", layer_kwargs={"chunk_size": 2})
    with pytest.raises(ValueError, match="unknown layer"):
        ModelConfig(layers=["gru", "nope"])


@pytest.mark.parametrize("mlp", ["gelu", "geglu", "swiglu"])
def test_mlp_kinds(mlp):
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(layer="gru", d_model=8, n_layers=1, vocab_size=16, mlp=mlp))
    block = model.backbone.blocks[0]
    u = torch.randn(3, 8)
    up, down = block.mlp.up, block.mlp.down
    if mlp == "gelu":
        expected = down(torch.nn.functional.gelu(up(u)))
    else:
        g = block.mlp.gate(u)
        act = g * 0.5 * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (g + 0.044715 * g**3)))
        act = act if mlp == "geglu" else g * torch.sigmoid(g)
        expected = down(act * up(u))
    torch.testing.assert_close(block.mlp(u), expected)


def test_gemma_style_norm_embedding_scale_and_softcap():
    torch.manual_seed(0)
    config = ModelConfig(
        layer="gru",
        d_model=8,
        n_layers=1,
        vocab_size=16,
        norm="rmsnorm_plus_one",
        norm_eps=1e-6,
        embed_scale=8**0.5,
        logit_softcap=3.0,
    )
    model = LanguageModel(config)
    norm = model.backbone.norm
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(2, 8)
    expected = x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt() * (1 + norm.weight)
    torch.testing.assert_close(norm(x), expected)
    ids = torch.randint(0, 16, (2, 5))
    logits = model(ids)
    assert logits.abs().max() < 3.0
    h, _ = model.backbone(model.embed(ids) * 8**0.5)
    torch.testing.assert_close(logits, 3.0 * torch.tanh(model.unembed(h) / 3.0))
