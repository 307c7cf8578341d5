"""``statewise bench fused``: one quick run; the numbers are there, finite and positive, the
crossover follows from the timings, and the CLI refuses layers it cannot run. No test
asserts a speed."""

from __future__ import annotations

import json
import math

import pytest

from statewise.bench.fused import Options, run_fused_bench
from statewise.cli import main


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_run(tmp_path, capsys):
    out = tmp_path / "fused.json"
    assert main(["bench", "fused", "--quick", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert positive(result["bandwidth_gbs"])
    assert [r["layer"] for r in result["results"]] == list(Options.quick().layers)
    for r in result["results"]:
        for key in ("block_bytes", "read_us", "fused_block_us", "torch_block_us", "ratio"):
            assert positive(r[key]), key
        assert r["ratio"] == pytest.approx(r["fused_block_us"] / r["read_us"])
        assert sorted(int(b) for b in r["by_batch"]) == [1, 2, 4]
        assert all(positive(f) and positive(t) for f, t in r["by_batch"].values())
        leading = 0  # the crossover: the last batch size of the leading run where fused won
        for b in sorted(r["by_batch"], key=int):
            fused_ms, torch_ms = r["by_batch"][b]
            if fused_ms > torch_ms:
                break
            leading = int(b)
        assert r["crossover"] == leading
        assert f"{r['layer']}: fused block step at batch 1" in printed


def test_a_run_from_python_times_each_batch_size():
    opts = Options(layers=("mingru",), d_model=32, n_layers=1, max_batch=2, repeats=1)
    result = run_fused_bench(opts)
    assert len(result["results"]) == 1 and set(result["results"][0]["by_batch"]) == {1, 2}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--layers", "nope"], "unknown layer 'nope'"),
        (["--layers", "s4d"], "no fused decode step"),
        (["--d-model", "0"], "--d-model must be >= 1"),
    ],
)
def test_refused(argv, message, capsys):
    assert main(["bench", "fused", *argv]) == 2
    assert message in capsys.readouterr().err
