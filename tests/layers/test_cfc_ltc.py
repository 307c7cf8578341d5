"""CfC and LTC, the continuous-time layers: against ncps (the authors' package) with copied
weights and irregular time deltas, and dt through forward (masks, packed documents), step
and the float64 references. The contract harness covers the rest with dt = None."""

from __future__ import annotations

import pytest
import torch

import statewise.layers as L
from tests.reference.cfc import run as cfc_reference
from tests.reference.ltc import run as ltc_reference

REFERENCES = {"cfc": cfc_reference, "ltc": ltc_reference}
OPTIONS = {
    "cfc": [
        {"backbone_units": 8},
        {"kind": "no_gate", "backbone_units": 8, "backbone_layers": 2},
        {"kind": "pure", "hidden_size": 6},
    ],
    "ltc": [{"hidden_size": 5, "ode_unfolds": 3}, {"ode_unfolds": 6}],
}
CASES = [(name, kw) for name, options in OPTIONS.items() for kw in options]


def make(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    layer = L.get(name, 4, **kw).double()
    with torch.no_grad():  # off the init, so every weight matters
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def irregular_dt(batch: int, seq_len: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.rand(batch, seq_len, generator=g, dtype=torch.float64) * 2.0


@pytest.mark.parametrize("name, kw", CASES, ids=str)
def test_forward_with_dt_equals_reference(name, kw):
    layer = make(name, **kw)
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    dt = irregular_dt(3, 7)
    dt[1, 2] = 0.0  # no time passes
    state = torch.randn(3, layer.hidden_size, dtype=torch.float64)
    y, final = layer(x, state, dt=dt)
    y_ref, final_ref = REFERENCES[name](layer, x, state, dt)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(final, final_ref, rtol=1e-10, atol=1e-12)
    steps = []
    s = state
    for t in range(7):  # step by step
        y_t, s = layer.step(x[:, t], s, dt=dt[:, t])
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, 1), y_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name, kw", CASES, ids=str)
def test_dt_matters_and_one_is_the_default(name, kw):
    layer = make(name, **kw)
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    y_none, _ = layer(x)
    y_one, _ = layer(x, dt=torch.ones(2, 5, dtype=torch.float64))
    torch.testing.assert_close(y_none, y_one, rtol=0, atol=0)
    y_irregular, _ = layer(x, dt=irregular_dt(2, 5))
    assert (y_irregular - y_one).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["cfc", "ltc"])
def test_dt_with_masks_and_packed_documents(name):
    """Each document of a packed, padded row gets what the reference gives it alone."""
    layer = make(name, **OPTIONS[name][0])
    x = torch.randn(2, 8, 4, dtype=torch.float64)
    dt = irregular_dt(2, 8)
    resets = torch.zeros(2, 8, dtype=torch.bool)
    resets[0, 3] = resets[1, 5] = True
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 6:] = False
    y, _ = layer(x, mask=mask, resets=resets, dt=dt)
    for b, parts in ((0, [slice(0, 3), slice(3, 8)]), (1, [slice(0, 5), slice(5, 6)])):
        for part in parts:
            fresh = layer.init_state(1, dtype=torch.float64)
            y_ref, _ = REFERENCES[name](layer, x[b : b + 1, part], fresh, dt[b : b + 1, part])
            torch.testing.assert_close(y[b : b + 1, part], y_ref, rtol=1e-10, atol=1e-12)


def test_ltc_with_dt_zero_keeps_its_state():
    layer = make("ltc", hidden_size=5)
    state = torch.randn(2, 5, dtype=torch.float64)
    _, new = layer.step(torch.randn(2, 4, dtype=torch.float64), state, dt=torch.zeros(2))
    torch.testing.assert_close(new, state, rtol=0, atol=0)


# ------------------------------------------------------------------ against ncps


def test_cfc_equals_ncps():
    ncps = pytest.importorskip("ncps.torch", reason="ncps (the authors' package) is not installed")
    for kind, layers in (("default", 1), ("no_gate", 2), ("pure", 1)):
        ours = make("cfc", hidden_size=6, backbone_units=8, backbone_layers=layers, kind=kind)
        cell = ncps.CfCCell(4, 6, mode=kind, backbone_units=8, backbone_layers=layers).double()
        with torch.no_grad():
            for k, linear in enumerate(ours.backbone):
                cell.backbone[2 * k].weight.copy_(linear.weight)
                cell.backbone[2 * k].bias.copy_(linear.bias)
            names = ("ff1",) + (("w_tau", "A") if kind == "pure" else ("ff2", "time_a", "time_b"))
            for name in names:
                theirs, mine = getattr(cell, name), getattr(ours, name)
                if isinstance(mine, torch.nn.Linear):
                    theirs.weight.copy_(mine.weight)
                    theirs.bias.copy_(mine.bias)
                else:
                    theirs.copy_(mine.reshape(theirs.shape))
        x = torch.randn(3, 6, 4, dtype=torch.float64)
        dt = irregular_dt(3, 6)
        y, _ = ours(x, dt=dt)
        h = torch.zeros(3, 6, dtype=torch.float64)
        for t in range(6):
            _, h = cell(x[:, t], h, dt[:, t : t + 1])  # (B, 1): see the CfC module doc
            y_ncps = h if ours.out_proj is None else ours.out_proj(h)
            torch.testing.assert_close(y[:, t], y_ncps, rtol=1e-10, atol=1e-12)


def test_ltc_equals_ncps():
    ncps = pytest.importorskip("ncps", reason="ncps (the authors' package) is not installed")
    ours = make("ltc", hidden_size=5, ode_unfolds=4)
    wiring = ncps.wirings.FullyConnected(5)
    cell = ncps.torch.LTCCell(wiring, in_features=4, ode_unfolds=4, implicit_param_constraints=True)
    cell = cell.double()
    with torch.no_grad():
        for name in ("gleak", "vleak", "cm", "w", "sigma", "mu", "erev", "sensory_w",
                     "sensory_sigma", "sensory_mu", "sensory_erev", "input_w", "input_b",
                     "output_w", "output_b"):  # fmt: skip
            cell._params[name].copy_(getattr(ours, name))
    x = torch.randn(3, 6, 4, dtype=torch.float64)
    dt = irregular_dt(3, 6) + 0.1
    y, _ = ours(x, dt=dt)
    v = torch.zeros(3, 5, dtype=torch.float64)
    for t in range(6):
        out, v = cell(x[:, t], v, dt[:, t : t + 1])
        torch.testing.assert_close(y[:, t], ours.out_proj(out), rtol=1e-10, atol=1e-12)
