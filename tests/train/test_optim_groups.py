"""Per-parameter optimiser settings: the ``_optim`` tag (weight decay off, lr_scale,
lr_max) becomes one param group per setting, the schedule sets each group's lr from its own
base, and every training loop (the trainer, fit's train_loop, the arena) goes through it."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from statewise.train.config import TrainConfig
from statewise.train.optim import make_optimizer, param_groups, set_lr


def toy() -> torch.nn.Module:
    m = torch.nn.Module()
    m.matrix = torch.nn.Parameter(torch.randn(3, 4))  # decayed, 1x
    m.vector = torch.nn.Parameter(torch.randn(4))  # not decayed, 1x
    m.fast = torch.nn.Parameter(torch.randn(4))
    m.fast._optim = {"lr_scale": 2.0}
    m.capped = torch.nn.Parameter(torch.randn(2, 2))  # a matrix: decayed unless tagged
    m.capped._optim = {"weight_decay": 0.0, "lr_max": 1e-3}
    m.capped_too = torch.nn.Parameter(torch.randn(5))
    m.capped_too._optim = {"weight_decay": 0.0, "lr_max": 1e-3}
    return m


def hand_lr(step: int, peak: float, warmup: int, steps: int, ratio: float) -> float:
    """The warm-up + cosine schedule written out again, for one group's peak lr."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / (steps - warmup))
    return peak * (ratio + (1 - ratio) * (1 + math.cos(math.pi * p)) / 2)


def test_groups_and_their_lrs_at_several_steps_match_a_hand_computation():
    torch.manual_seed(0)
    model = toy()
    config = TrainConfig(lr=3e-3, weight_decay=0.1, warmup_steps=10, steps=100, min_lr_ratio=0.1)
    groups = param_groups(model, config)
    names = {id(p): n for n, p in model.named_parameters()}
    got = [
        (sorted(names[id(p)] for p in g["params"]), g["weight_decay"], g["base_lr"]) for g in groups
    ]
    assert got == [
        (["matrix"], 0.1, 3e-3),
        (["vector"], 0.0, 3e-3),
        (["fast"], 0.0, 6e-3),  # 2 x 3e-3
        (["capped", "capped_too"], 0.0, 1e-3),  # min(3e-3, 1e-3)
    ]
    optimizer = make_optimizer(model, config)
    peaks = {"matrix": 3e-3, "vector": 3e-3, "fast": 6e-3, "capped": 1e-3, "capped_too": 1e-3}
    for step in (0, 4, 9, 10, 37, 99, 150):
        logged = set_lr(optimizer, step, config)
        assert logged == pytest.approx(hand_lr(step, 3e-3, 10, 100, 0.1), rel=1e-12)
        for g in optimizer.param_groups:
            for p in g["params"]:
                expected = hand_lr(step, peaks[names[id(p)]], 10, 100, 0.1)
                assert g["lr"] == pytest.approx(expected, rel=1e-12), (step, names[id(p)])


def test_one_step_equals_adamw_over_hand_built_groups():
    """The update equals torch.optim.AdamW given the groups written by hand."""
    torch.manual_seed(0)
    ours, ref = toy(), toy()
    ref.load_state_dict(ours.state_dict())
    config = TrainConfig(lr=3e-3, weight_decay=0.1, warmup_steps=4, steps=50)
    optimizer = make_optimizer(ours, config)
    step = 2  # in the warm-up: lr = 3e-3 * 3 / 4
    set_lr(optimizer, step, config)
    f = 3 / 4
    hand = torch.optim.AdamW(
        [
            {"params": [ref.matrix], "weight_decay": 0.1, "lr": 3e-3 * f},
            {"params": [ref.vector], "weight_decay": 0.0, "lr": 3e-3 * f},
            {"params": [ref.fast], "weight_decay": 0.0, "lr": 6e-3 * f},
            {"params": [ref.capped, ref.capped_too], "weight_decay": 0.0, "lr": 1e-3 * f},
        ],
        betas=(0.9, 0.95),
    )
    x = torch.randn(4)
    for model, opt in ((ours, optimizer), (ref, hand)):
        for _ in range(3):
            opt.zero_grad()
            loss = (model.matrix @ x).pow(2).sum() + (model.vector * model.fast).sum()
            loss = loss + model.capped.pow(3).sum() + model.capped_too.sin().sum()
            loss.backward()
            opt.step()
    for name, p in ours.named_parameters():
        assert torch.equal(p, ref.get_parameter(name)), name


def test_untagged_models_keep_two_groups_and_a_bad_tag_is_named():
    model = torch.nn.Linear(3, 3)
    groups = param_groups(model, TrainConfig(weight_decay=0.0))
    assert len(groups) == 2  # decayed (here by 0) and not: old checkpoints still load
    model.weight._optim = {"lr_mult": 2.0}
    with pytest.raises(ValueError, match="parameter weight: _optim"):
        param_groups(model, TrainConfig())


def test_layers_tag_s4d_dynamics_and_rwkv_time_decay():
    from statewise.layers.registry import get

    config = TrainConfig(lr=3e-3)
    for layer, expected in (
        ("s4d", {"log_dt": 1e-3, "log_A_real": 1e-3, "A_imag": 1e-3, "C": 3e-3, "B": 3e-3}),
        ("rwkv", {"att.time_decay": 6e-3, "att.time_decay_w1": 3e-3, "att.time_faaaa": 3e-3}),
    ):
        mixer = get(layer, 64)
        base = {id(p): g["base_lr"] for g in param_groups(mixer, config) for p in g["params"]}
        got = {n: base[id(mixer.get_parameter(n))] for n in expected}
        assert got == pytest.approx(expected, rel=1e-12), layer


# ----------------------------------------------- every loop: S4D's dynamics at <= 1e-3

S4D_DYNAMICS = ("log_dt", "log_A_real", "A_imag")


@pytest.fixture
def seen_lrs(monkeypatch):
    """Every AdamW step records the lr each parameter was stepped with (by id)."""
    seen: list[dict[int, float]] = []
    step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        seen.append({id(p): g["lr"] for g in self.param_groups for p in g["params"]})
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    return seen


def dynamics_lrs(model: torch.nn.Module, seen: list[dict[int, float]]) -> tuple[float, float]:
    """(largest lr a dynamics parameter of an S4D got, largest lr of any other parameter)."""
    dyn = {
        id(p)
        for n, p in model.named_parameters()
        if n.rsplit(".", 1)[-1] in S4D_DYNAMICS and "mixer" in n
    }
    assert dyn, "the model holds no S4D layer"
    assert seen, "the loop took no AdamW step"
    top = max(lr for s in seen for i, lr in s.items() if i in dyn)
    other = max(lr for s in seen for i, lr in s.items() if i not in dyn)
    return top, other


def test_s4d_dynamics_at_most_1e_3_in_the_trainer(tmp_path, tiny_text, seen_lrs, monkeypatch):
    from statewise.train import trainer
    from statewise.train.config import load_config

    built = []
    build = trainer.build_model
    monkeypatch.setattr(trainer, "build_model", lambda c: built.append(build(c)) or built[-1])
    (tmp_path / "c.toml").write_text(
        f'[model]\nlayer = "s4d"\nd_model = 8\nn_layers = 1\n[data]\npath = "{tiny_text}"\n'
        "seq_len = 16\n[train]\nsteps = 4\nbatch_size = 2\nlr = 1e-2\nwarmup_steps = 0\n"
        "eval_batches = 1\n"
    )
    trainer.train(load_config(tmp_path / "c.toml"), tmp_path / "run", progress=False)
    top, other = dynamics_lrs(built[0], seen_lrs)
    assert top == pytest.approx(1e-3) and other == pytest.approx(1e-2)


def test_s4d_dynamics_at_most_1e_3_in_fit_and_the_arena(seen_lrs):
    from statewise.arena.runner import _train_run
    from statewise.estimators.fit import train_loop
    from statewise.models import ModelConfig, build_model
    from statewise.tasks.config import DataConfig, build_task
    from statewise.train.evaluate import token_loss

    config = ModelConfig(layer="s4d", d_model=8, n_layers=1, vocab_size=16)
    task = build_task(DataConfig(task="mqar", seq_len=16, vocab_size=16, n_pairs=2), 0)
    # fit(): the estimators' loop
    model = build_model(config)
    batch = task.train_batch(0, 4)

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        return token_loss(model(batch[0]), batch[1])

    history: list = []
    train_loop(
        model,
        loss_fn,
        8,
        batch_size=4,
        lr=1e-2,
        weight_decay=0.1,
        seed=0,
        total=4,
        budget_s=None,
        progress=False,
        history=history,
    )
    top, other = dynamics_lrs(model, seen_lrs)
    assert top <= 1e-3 and other > 1e-3
    # the arena's loop
    seen_lrs.clear()
    suite = SimpleNamespace(batch_size=4, eval_batches=1)
    trained, record = _train_run(config, task, 1e-2, 0, suite, None, 4)
    top, other = dynamics_lrs(trained, seen_lrs)
    assert top <= 1e-3 and other > 1e-3 and record["steps"] == 4
