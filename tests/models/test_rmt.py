"""The Recurrent Memory Transformer option (model.memory_tokens, statewise/models/rmt.py):
the forward equals running the segments one by one by hand, pieces and steps equal the
whole, the memory carries information (and gradients) from segment to segment, memory off
is the plain model, and bad configs, states and resets are refused."""

from __future__ import annotations

import pytest
import torch

from statewise.errors import ArgumentError, ConfigError
from statewise.models import ModelConfig, build_model

M, S, V = 2, 4, 11  # memory tokens, segment length, vocabulary
STACKS = {  # "around any attention stack", and around a recurrent one
    "attention": ("attention", {}),
    "local_attention": ("attention", {"window": 3}),
    "mingru": ("mingru", {}),
    "griffin": ("rglru", {}),
}
EXACT = {"rtol": 1e-9, "atol": 1e-10}  # float64 throughout


def rmt_model(name: str = "attention", seed: int = 0, **overrides) -> torch.nn.Module:
    layer, kwargs = STACKS[name]
    settings = {"memory_tokens": M, "segment_len": S, **overrides}
    config = ModelConfig(
        layer=layer, layer_kwargs=kwargs, d_model=16, n_layers=2, vocab_size=V, **settings
    )
    if name == "griffin":
        config = ModelConfig(**{**config.__dict__, "layers": ["rglru", "attention"]})
    torch.manual_seed(seed)
    model = build_model(config).double().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # off the init, some of which hides history (zero outputs)
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def ids_of(batch: int, length: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", STACKS)
def test_forward_equals_segments_run_by_hand(name):
    model = rmt_model(name)
    ids = ids_of(3, 3 * S + 2)  # three full segments and a partial one
    with torch.no_grad():
        memory = model.rmt.initial.expand(3, -1, -1)
        expected = []
        for start in range(0, ids.shape[1], S):
            segment = model._embed(ids[:, start : start + S])
            full = segment.shape[1] == S
            x = torch.cat([memory, segment, *([memory] if full else [])], dim=1)
            out, _ = model.backbone(x)  # a fresh stack state per segment
            expected.append(model._logits(out[:, M : M + segment.shape[1]]))
            memory = out[:, M + S :] if full else memory
        logits, state = model(ids, return_state=True)
    torch.testing.assert_close(logits, torch.cat(expected, dim=1), **EXACT)
    torch.testing.assert_close(state["memory"], memory, **EXACT)
    assert state["count"].tolist() == [2, 2, 2]
    assert torch.equal(state["tokens"][:, :2], ids[:, -2:])
    assert not state["tokens"][:, 2:].any()


@pytest.mark.parametrize("name", STACKS)
def test_pieces_and_steps_equal_the_whole(name):
    model = rmt_model(name)
    ids = ids_of(2, 3 * S + 1)
    with torch.no_grad():
        whole, final = model(ids, return_state=True)
        state, pieces = None, []
        for part in (ids[:, :3], ids[:, 3:9], ids[:, 9:]):  # cuts inside segments
            out, state = model(part, state=state, return_state=True)
            pieces.append(out)
        state_steps, steps = None, []
        for t in range(ids.shape[1]):
            out, state_steps = model.step(ids[:, t], state_steps)
            steps.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, **EXACT)
    torch.testing.assert_close(torch.stack(steps, dim=1), whole, **EXACT)
    for s in (state, state_steps):
        torch.testing.assert_close(s["memory"], final["memory"], **EXACT)
        assert torch.equal(s["tokens"], final["tokens"]) and torch.equal(s["count"], final["count"])


def test_rows_at_different_segment_positions_each_get_what_they_get_alone():
    """A batch of states at different points of their segments (the serving engine's
    slots): each row's continuation equals its own."""
    model = rmt_model("attention")
    ids = ids_of(2, 10)
    with torch.no_grad():
        _, a = model(ids[:1, :1], return_state=True)  # 1 token into its segment
        _, b = model(ids[1:, :7], return_state=True)  # 3 tokens into its second segment
        both = {k: torch.cat([a[k], b[k]]) for k in a}
        rest = ids_of(2, 6, seed=5)
        logits, state = model(rest, state=both, return_state=True)
        alone_a, state_a = model(rest[:1], state=a, return_state=True)
        alone_b, state_b = model(rest[1:], state=b, return_state=True)
    torch.testing.assert_close(logits, torch.cat([alone_a, alone_b]), **EXACT)
    torch.testing.assert_close(state["memory"], torch.cat([state_a["memory"], state_b["memory"]]))
    assert state["count"].tolist() == [(1 + 6) % S, (7 + 6) % S]


def test_memory_carries_information_forward_and_only_through_memory():
    """Changing a token of the first segment changes the last segment's logits; each
    segment starts the stack afresh, so the memory is the only path."""
    model = rmt_model("attention")
    ids = ids_of(1, 3 * S)
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % V
    with torch.no_grad():
        before, after = model(ids), model(changed)
        assert not torch.allclose(before[:, 2 * S :], after[:, 2 * S :])
        # the changed row's last segment from the unchanged row's memory: no change left
        _, memory = model(ids[:, : 2 * S], return_state=True)
        alone = model(changed[:, 2 * S :], state=memory)
    torch.testing.assert_close(alone, before[:, 2 * S :], **EXACT)


@pytest.mark.parametrize(
    "bptt, loss_at, reaches",
    [
        (0, 2, [True, True, True]),
        (2, 2, [False, False, True]),  # detached after segment 2 (index 1)
        (2, 1, [True, True, False]),
        (1, 1, [False, True, False]),
    ],
)
def test_gradients_flow_through_memory_to_earlier_segments(bptt, loss_at, reaches):
    """The loss of one segment alone has a gradient at the earlier segments' token
    embeddings (and the learned initial memory) through the memory, unless memory_bptt
    cut it (k: the memory is detached after segments k, 2k, ... of a forward)."""
    model = rmt_model("attention", memory_bptt=bptt)
    table = torch.randn(1, 3 * S, 16, dtype=torch.float64, requires_grad=True)
    positions = torch.arange(3 * S)[None]

    def embed(chunk: torch.Tensor) -> torch.Tensor:  # ids are positions into ``table``
        return table[:, chunk[0]]

    h, _ = model.rmt(model.backbone, embed, positions)
    model._logits(h[:, loss_at * S : (loss_at + 1) * S]).square().sum().backward()
    per_segment = table.grad.abs().sum(dim=(0, 2)).view(3, S).sum(dim=1)
    assert [bool(g > 0) for g in per_segment] == reaches
    initial = model.rmt.initial.grad
    assert (initial is not None and bool(initial.abs().sum() > 0)) == reaches[0]


def test_memory_off_is_the_plain_model():
    plain = ModelConfig(layer="attention", d_model=16, n_layers=2, vocab_size=V)
    torch.manual_seed(0)
    model = build_model(plain).double()
    assert model.rmt is None and not any("rmt" in k for k in model.state_dict())
    ids = ids_of(2, 9)
    h, _ = model.backbone(model._embed(ids))
    assert torch.equal(model(ids), model._logits(h))
    # and the RMT model holds the plain model's parameters and one more: the memory
    torch.manual_seed(0)
    rmt = build_model(ModelConfig(**{**plain.__dict__, "memory_tokens": M, "segment_len": S}))
    assert set(rmt.state_dict()) - set(model.state_dict()) == {"rmt.initial"}


def test_generate_continues_what_the_forward_predicts():
    model = rmt_model("mingru")
    prompt = ids_of(2, 3)
    out = model.generate(prompt, max_new_tokens=7, top_k=1, seed=0)
    with torch.no_grad():
        logits = model(out[:, :-1])
    assert torch.equal(out[:, 3:], logits[:, 2:].argmax(-1))


def test_packed_documents_equal_each_document_alone():
    """Row 0 packs documents at 0, 3 and 9 (each starts from the initial memory with its
    own segments); row 1 has none and runs with the batch; the state after is the last
    document's."""
    model = rmt_model("attention")
    ids = ids_of(3, 14)
    resets = torch.zeros(3, 14, dtype=torch.bool)
    resets[0, [3, 9]] = True
    resets[2, 0] = True  # a document starting at column 0: nothing to cut
    with torch.no_grad():
        _, before = model(ids_of(3, 5, seed=7), return_state=True)  # row 0 mid-segment
        logits, state = model(ids, state=before, resets=resets, return_state=True)
        first = model(ids[:1, :3], state={k: v[:1] for k, v in before.items()})
        second = model(ids[:1, 3:9])
        third, third_state = model(ids[:1, 9:], return_state=True)
        rest, rest_state = model(
            ids[1:2], state={k: v[1:2] for k, v in before.items()}, return_state=True
        )
        fresh = model(ids[2:])
    torch.testing.assert_close(logits[:1], torch.cat([first, second, third], dim=1), **EXACT)
    torch.testing.assert_close(logits[1:2], rest, **EXACT)
    torch.testing.assert_close(logits[2:], fresh, **EXACT)
    for k in state:
        torch.testing.assert_close(state[k][:2], torch.cat([third_state[k], rest_state[k]]))
    # and packing changes something (the test can fail)
    assert not torch.allclose(
        logits[:1, 3:], model(ids[:1], state={k: v[:1] for k, v in before.items()})[:, 3:]
    )


def test_refuses_masks_with_states_and_bad_states():
    model = rmt_model("attention")
    ids = ids_of(2, 6)
    state = model.init_state(2)
    with pytest.raises(ArgumentError, match="mask"):
        model(ids, state=state, mask=torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(ArgumentError, match="state"):
        model(ids, state=model.init_state(3))
    with pytest.raises(ArgumentError, match="state"):
        model(ids, state=[None, None])
    with pytest.raises(ArgumentError, match="count"):
        model.step(ids[:, 0], {**state, "count": torch.full((2,), S)})


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"memory_tokens": -1}, "memory_tokens"),
        ({"memory_tokens": 2}, "segment_len"),
        ({"segment_len": 8}, "memory_tokens"),
        ({"memory_bptt": 2}, "memory_tokens"),
        ({"memory_tokens": 2, "segment_len": 8, "memory_bptt": -1}, "memory_bptt"),
        ({"memory_tokens": 2, "segment_len": 8, "head": "classifier", "n_classes": 2}, "head"),
    ],
)
def test_config_validation(fields, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(layer="attention", **fields)
