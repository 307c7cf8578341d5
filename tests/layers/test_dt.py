"""The contract's ``dt`` (time since the previous token): every discrete-time layer refuses
it clearly; a continuous-time layer receives it intact, in forward (masked, packed into
segments by ``resets``) and in step, also through a model's blocks."""

from __future__ import annotations

import pytest
import torch

import statewise.layers as L
from statewise.errors import ArgumentError, ArgumentTypeError, NonFiniteError
from statewise.layers.base import SequenceMixer
from statewise.models import ModelConfig
from statewise.models.block import Backbone


class Clock(SequenceMixer):
    """A test layer that uses dt: its state is the elapsed time s, s_t = s_{t-1} + dt_t on
    real tokens, and y_t = x_t * s_t."""

    modes = ("recurrent",)
    uses_dt = True

    def _forward(self, x, state, mask, mode, dt):
        outs = []
        for t in range(x.shape[1]):
            step = dt[:, t] if mask is None else torch.where(mask[:, t], dt[:, t], 0.0)
            state = state + step[:, None]
            outs.append(x[:, t] * state)
        return torch.stack(outs, dim=1), state

    def _step(self, x_t, state, dt):
        state = state + dt[:, None]
        return x_t * state, state

    def _init_state(self, batch_size, device, dtype):
        return torch.zeros(batch_size, 1, device=device, dtype=dtype)


def elapsed(dt: torch.Tensor, resets: torch.Tensor | None = None) -> torch.Tensor:
    """The expected clock: the cumulative sum of dt, restarted at each reset."""
    out = torch.zeros_like(dt)
    for b in range(dt.shape[0]):
        total = 0.0
        for t in range(dt.shape[1]):
            total = (0.0 if resets is not None and resets[b, t] else total) + float(dt[b, t])
            out[b, t] = total
    return out


DISCRETE = [name for name in L.names() if not L.info(name).cls.uses_dt]


def test_the_continuous_time_layers_use_dt():
    assert sorted(set(L.names()) - set(DISCRETE)) == ["cfc", "ltc"]


@pytest.mark.parametrize("name", DISCRETE)
def test_discrete_layers_refuse_dt(name):
    layer = L.get(name, 8)
    with pytest.raises(ArgumentError, match="takes no dt"):
        layer(torch.randn(2, 3, 8), dt=torch.ones(2, 3))
    with pytest.raises(ArgumentError, match="takes no dt"):
        layer.step(torch.randn(2, 8), dt=torch.ones(2))


def test_dt_reaches_forward_and_step():
    clock = Clock(4)
    x = torch.ones(2, 5, 4, dtype=torch.float64)
    dt = torch.rand(2, 5, dtype=torch.float64)
    y, state = clock(x, dt=dt)
    torch.testing.assert_close(y[..., 0], elapsed(dt))
    y_t, state = clock.step(x[:, 0], state, dt=dt[:, 0])
    torch.testing.assert_close(y_t[:, 0], elapsed(dt)[:, -1] + dt[:, 0])


def test_dt_is_cut_with_the_packed_documents_and_skipped_on_padding():
    clock = Clock(4)
    x = torch.ones(2, 6, 4, dtype=torch.float64)
    dt = torch.rand(2, 6, dtype=torch.float64)
    resets = torch.zeros(2, 6, dtype=torch.bool)
    resets[0, 2] = resets[0, 4] = resets[1, 3] = True
    y, _ = clock(x, resets=resets, dt=dt)
    torch.testing.assert_close(y[..., 0], elapsed(dt, resets))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, :2] = False  # left padding
    _, final = clock(x, mask=mask, dt=dt)
    torch.testing.assert_close(final[:, 0], (dt * mask).sum(1))


def test_a_model_passes_dt_to_its_blocks():
    """Backbone with a Clock as every block's mixer: its forward and step read dt."""
    backbone = Backbone(ModelConfig(layer="mingru", d_model=4, n_layers=2, mlp_ratio=0))
    for block in backbone.blocks:
        block.mixer = Clock(4)
    backbone = backbone.double()
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    dt = torch.rand(2, 3, dtype=torch.float64)
    _, state = backbone(x, dt=dt)
    assert all(torch.allclose(s[:, 0], dt.sum(1)) for s in state)
    _, state = backbone.step(x[:, 0], state, dt=dt[:, 0])
    assert all(torch.allclose(s[:, 0], dt.sum(1) + dt[:, 0]) for s in state)
    with pytest.raises(ArgumentError, match="takes no dt"):
        Backbone(ModelConfig(layer="mingru", d_model=4, n_layers=1))(x.float(), dt=dt.float())


@pytest.mark.parametrize(
    "dt, error, message",
    [
        (torch.ones(2, 4), ArgumentError, r"shape \(2, 3\)"),
        (torch.ones(2, 3, dtype=torch.long), ArgumentTypeError, "floating"),
        ([[1.0] * 3] * 2, ArgumentTypeError, "torch.Tensor"),
        (torch.tensor([[1.0, float("nan"), 1.0]] * 2), NonFiniteError, "NaN or inf"),
        (torch.tensor([[1.0, -1.0, 1.0]] * 2), ArgumentError, ">= 0"),
    ],
)
def test_bad_dt(dt, error, message):
    with pytest.raises(error, match=message):
        Clock(4)(torch.ones(2, 3, 4), dt=dt)
