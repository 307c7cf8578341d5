"""``python -m statewise.bench.irregular``: the data and one tiny run of each kind of model
(no test asserts a score: a few steps learn nothing)."""

from __future__ import annotations

import math

import torch

from statewise.bench import irregular


def test_the_data_is_what_the_doc_says():
    values, gaps, w = irregular.irregular_sines(64, 20, torch.Generator().manual_seed(0))
    assert values.shape == gaps.shape == (64, 20) and w.shape == (64,)
    assert gaps.min() >= irregular.GAP_RANGE[0] and gaps.max() <= irregular.GAP_RANGE[1]
    assert w.min() >= irregular.W_RANGE[0] and w.max() <= irregular.W_RANGE[1]
    assert values.abs().max() <= 1.0 + 0.05 * 6  # a sine plus noise of sd 0.05
    assert values.std() > 0.5  # the sines are there, not only noise


def test_every_variant_runs(capsys):
    argv = ["--steps", "2", "--test-size", "8", "--seq-len", "6", "--d-model", "8"]
    assert irregular.main(argv) == 0
    table = capsys.readouterr().out
    for variant in irregular.VARIANTS:
        row = next(line for line in table.splitlines() if line.startswith(f"| {variant} |"))
        mse = float(row.split("|")[3])
        assert math.isfinite(mse) and mse > 0
