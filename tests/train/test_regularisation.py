"""AWD-LSTM's regularisation and optimisation (Merity et al. 2017) and gradient
accumulation: weight drop, locked dropout, NT-ASGD, train.grad_accum."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from statewise.layers.registry import get
from statewise.models.block import LockedDropout
from statewise.train import checkpoint
from statewise.train.config import parse_config
from statewise.train.optim import NTASGD
from statewise.train.trainer import train
from tests.run_dirs import newest

TORCH_CELL = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}


def reference(layer: str, mixer: torch.nn.Module, weight_hh: torch.Tensor) -> torch.nn.Module:
    """torch.nn's LSTM / GRU / RNN holding the mixer's weights with ``weight_hh``."""
    ref = TORCH_CELL[layer](mixer.d_model, mixer.hidden_size, batch_first=True)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(mixer.weight_ih)
        ref.weight_hh_l0.copy_(weight_hh)
        ref.bias_ih_l0.copy_(mixer.bias_ih)
        ref.bias_hh_l0.copy_(mixer.bias_hh)
    return ref


@pytest.mark.parametrize("layer", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("path", ["aten", "kernel"])
def test_weight_drop_runs_the_recurrence_on_the_dropped_matrix(layer, path):
    """In training mode the output is torch.nn's with weight_hh * mask / (1 - p), the mask
    drawn once per forward (re-drawn here from the same seed); in eval mode nothing is
    dropped. A mask of all-True routes the mixer to the numba kernel (or the loop when
    numba is off), no mask to ATen's fused op: both must receive the dropped matrix."""
    torch.manual_seed(0)
    mixer = get(layer, 8, weight_drop=0.5)
    x = torch.randn(3, 7, 8)
    mask = torch.ones(3, 7, dtype=torch.bool) if path == "kernel" else None
    mixer.train()
    torch.manual_seed(1)
    y_train, _ = mixer(x, mask=mask)
    torch.manual_seed(1)
    dropped = F.dropout(mixer.weight_hh.detach(), p=0.5, training=True)
    assert (dropped == 0).float().mean().item() == pytest.approx(0.5, abs=0.1)
    y_ref, _ = reference(layer, mixer, dropped)(x)
    torch.testing.assert_close(y_train, y_ref, rtol=1e-5, atol=1e-6)
    y_again, _ = mixer(x, mask=mask)  # a new forward, a new mask
    assert not torch.allclose(y_again, y_train)
    mixer.eval()
    y_eval, _ = mixer(x, mask=mask)
    torch.testing.assert_close(y_eval, reference(layer, mixer, mixer.weight_hh)(x)[0])
    assert torch.equal(y_eval, mixer(x, mask=mask)[0])
    mixer.train()
    mixer(x, mask=mask)[0].sum().backward()
    assert mixer.weight_hh.grad.abs().sum() > 0


def test_weight_drop_is_checked():
    with pytest.raises(ValueError, match="weight_drop"):
        get("lstm", 8, weight_drop=1.0)


def test_locked_dropout_mask_is_constant_over_time():
    torch.manual_seed(0)
    drop = LockedDropout(0.4).train()
    y = drop(torch.ones(5, 50, 16))
    assert torch.equal(y, y[:, :1].expand_as(y))  # one mask per (sequence, channel)
    kept = y[:, 0] != 0
    assert torch.allclose(y[:, 0][kept], torch.tensor(1 / 0.6))
    assert 0.3 < 1 - kept.float().mean().item() < 0.5
    assert not torch.equal(y[0], y[1])  # each sequence its own mask
    assert torch.equal(drop.eval()(y), y)


def test_locked_dropout_in_the_model_acts_in_training_only():
    from statewise.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(layer="lstm", d_model=8, n_layers=2, locked_dropout=0.5))
    ids = torch.randint(0, 256, (2, 12))
    model.eval()
    assert torch.equal(model(ids), model(ids))
    model.train()
    assert not torch.allclose(model(ids), model(ids))
    with pytest.raises(ValueError, match="locked_dropout"):
        ModelConfig(locked_dropout=1.0)


# ------------------------------------------------------------------ NT-ASGD


def test_nt_asgd_triggers_on_the_non_monotone_criterion():
    """nonmono = 2: evaluation k triggers when k > 2 and its loss is worse than the best
    of evaluations 0 .. k-3. By hand: 3.5 (k=3) is not worse than 5; 3.2 (k=4) not worse
    than min(5, 4); 3.4 (k=5) is worse than min(5, 4, 3) = 3, although better than 3.5."""
    model = torch.nn.Linear(2, 2)
    averager = NTASGD(model, nonmono=2)
    fired = [averager.observe(v, step) for step, v in enumerate([5, 4, 3, 3.5, 3.2, 3.4, 9])]
    assert fired == [False, False, False, False, False, True, False]
    assert averager.trigger_step == 5
    steady = NTASGD(model, nonmono=2)
    assert not any(steady.observe(v, s) for s, v in enumerate([5, 4, 3, 3.5, 3.2, 2.9]))


def test_nt_asgd_averages_the_iterates_since_the_trigger():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    averager = NTASGD(model, nonmono=1)
    iterates: list[list[torch.Tensor]] = []
    for step in range(12):
        if step == 4:
            assert averager.observe(1.0, step) is False
            assert averager.observe(2.0, step) is False  # only one logged before
            assert averager.observe(3.0, step) is True  # 3 > min([1.0])
            iterates.append([p.detach().double().clone() for p in model.parameters()])
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).sum().backward()
        opt.step()
        averager.after_step()
        if averager.triggered:
            iterates.append([p.detach().double().clone() for p in model.parameters()])
    raw = [p.detach().clone() for p in model.parameters()]
    expected = [torch.stack(ps).mean(0) for ps in zip(*iterates)]  # w_4 .. w_12: 9 iterates
    assert len(iterates) == 9 and averager.count == 9
    with averager.averaged():
        for p, e in zip(model.parameters(), expected):
            torch.testing.assert_close(p.detach().double(), e, rtol=0, atol=1e-6)
    for p, r in zip(model.parameters(), raw):
        assert torch.equal(p, r)  # the raw weights are back


RUN = """
[model]
layer = "lstm"
d_model = 16
n_layers = 1
mlp_ratio = 2.0
[data]
task = "char_lm"
seq_len = 16
path = "{path}"
[train]
steps = {steps}
batch_size = 4
lr = 2.0
warmup_steps = 0
min_lr_ratio = 1.0
weight_decay = 0.0
grad_clip = 0.25
log_every = 2
eval_every = 2
eval_batches = 2
checkpoint_every = 10
optimizer = "nt_asgd"
nonmono = 1
"""


def test_nt_asgd_state_survives_a_checkpoint_and_resume_exactly(tmp_path, tiny_text):
    """AWD-LSTM's constant lr, so a run of 30 steps continued to 40 follows the same
    schedule as one of 40. Averaging starts before step 30 (asserted), so the resumed run
    must carry the averaged weights, the raw iterate and the count across the checkpoint."""
    whole, part = tmp_path / "whole", tmp_path / "part"
    config = parse_config(RUN.format(path=tiny_text, steps=40).encode(), "run")
    train(config, whole, progress=False)
    train(parse_config(RUN.format(path=tiny_text, steps=30).encode(), "run"), part, progress=False)
    state = checkpoint.load_train_state(part)["nt_asgd"]
    assert 0 < state["trigger_step"] < 30 and state["count"] > 1 and state["raw"]
    train(config, part, resume=True, progress=False)
    keys = ("step", "loss", "val_loss", "nt_asgd_averaging")
    records = [
        [tuple(m.get(k) for k in keys) for m in checkpoint.load_metrics(out)]
        for out in (whole, part)
    ]
    assert records[0] == records[1] and records[0][-1][0] == 40
    a, b = (checkpoint.load(out).state_dict() for out in (whole, part))
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name  # the averaged weights
    ta, tb = (torch.load(newest(o) / "train_state.pt", weights_only=True) for o in (whole, part))
    assert ta["nt_asgd"]["count"] == tb["nt_asgd"]["count"]
    for x, y in zip(ta["nt_asgd"]["raw"], tb["nt_asgd"]["raw"]):
        assert torch.equal(x, y)
    averaged = checkpoint.load(whole).state_dict()
    raw = dict(zip(averaged, ta["nt_asgd"]["raw"]))
    assert any(not torch.equal(averaged[n], raw[n]) for n in averaged)


# --------------------------------------------------------- gradient accumulation

ACCUM = """
[model]
layer = "{layer}"
d_model = 16
n_layers = 2
mlp_ratio = 2.0
[data]
task = "char_lm"
seq_len = 16
path = "{path}"
[train]
steps = 2
batch_size = 6
warmup_steps = 0
eval_batches = 1
state_passing = true
grad_accum = {k}
{optimizer}
"""
SGD = 'optimizer = "nt_asgd"\nlr = 1.0\ngrad_clip = 0.0'


@pytest.mark.parametrize("layer", ["lstm", "mingru"])
def test_grad_accum_gives_the_weights_of_the_whole_batch(tmp_path, tiny_text, layer):
    """Two steps with state passing (the second carries each row's state through its own
    micro-batch). With SGD at lr 1 the weights differ by the gradients' difference: float32
    rounding, measured <= 1.2e-7; a wrong loss weight or a mixed-up row would move them by
    ~1e-2. AdamW divides by the root of the second moment, which magnifies rounding in
    small gradients: measured <= 5.5e-6 at lr 3e-3 (one step moves a weight up to 3e-3)."""
    weights = {}
    for optimizer, atol in ((SGD, 1e-6), ("", 2e-5)):
        for k in (1, 2, 3):
            text = ACCUM.format(layer=layer, path=tiny_text, k=k, optimizer=optimizer)
            out = tmp_path / f"run-{k}-{len(optimizer)}"
            train(parse_config(text.encode(), "run"), out, progress=False)
            weights[k] = checkpoint.load(out).state_dict()
        for k in (2, 3):
            for name, w in weights[k].items():
                torch.testing.assert_close(w, weights[1][name], rtol=0, atol=atol)
