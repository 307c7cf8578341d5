"""``statewise bench targets``: the target table, its judging on made-up measurements, one
tiny real run, and the command line. No test asserts a speed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from statewise import layers
from statewise.bench import targets as tg
from statewise.bench.machine import measure_machine
from statewise.bench.speed import Shape
from statewise.bench.target_run import backend_ratios, run_targets, unique_jobs
from statewise.cli import main

LIMITS = {"gemm_gflops": 100.0, "bandwidth_gbs": 10.0}
TINY = tg.Shapes(Shape(2, 16, 16), Shape(2, 16, 32), 2, Shape(2, 32, 16), 16, 8, Shape(2, 16, 16))


def find(table: list[tg.Target], subject: str, kind: str) -> tg.Target:
    (target,) = [t for t in table if t.subject == subject and t.kind == kind]
    return target


def test_table_has_every_issue_target() -> None:
    table = tg.build_targets("torch")
    ratios = {(t.subject, t.what.split(" / ")[-1]): t.threshold for t in table if t.kind == "ratio"}
    assert ratios[("lstm", "torch.nn.LSTM")] == ratios[("gru", "torch.nn.GRU")] == 0.9
    assert ratios[("slstm", "eager loop")] == 10
    for name in tg.DIAGONAL:
        assert ratios[(name, "eager step loop")] == 10 and ratios[(name, "mingru-pytorch")] == 2
    assert ratios[("mamba", "mambapy MambaBlock")] == 5
    for name in tg.CHUNKED:
        assert ratios[(name, "recurrent")] == 10
        gemm = find(table, name, "gemm")
        assert gemm.threshold == 0.4 and gemm.jobs[0].shape.seq_len == 4096
        assert gemm.jobs[0].mode == "chunk" and gemm.jobs[0].forward
    for name in ("deltanet", "gated_deltanet"):  # issue 20's targets for the delta rule
        assert ratios[(name, "recurrent")] == 1
        ratio = next(t for t in table if t.layer == name and t.kind == "ratio")
        assert ratio.jobs[0].shape.seq_len == 512 and ratio.jobs[0].mode == "chunk"
        gemm = find(table, name, "gemm")
        assert gemm.threshold == 0.35 and gemm.jobs[0].shape.seq_len == 4096
    assert {t.subject for t in table if t.kind == "bandwidth"} == {
        "scan kernel (float32)",
        "scan kernel (complex64)",
    }
    stepped = {t.layer for t in table if t.kind == "step"}
    assert stepped == set(layers.names()) - {"attention"}
    assert stepped == {t.layer for t in table if t.kind == "memory"}
    for target in table:  # the smallest shapes the issue allows
        for job in target.jobs:
            if job.kind in ("layer", "peer"):
                assert job.shape.batch == 4 and job.shape.seq_len in (512, 1024, 4096)
                assert job.shape.d_model in (256, 768)
    slstm = find(table, "slstm", "ratio")
    assert slstm.jobs[0].shape.d_model == 768 and dict(slstm.jobs[0].kwargs) == {"n_heads": 12}


def test_backend_goes_to_our_jobs_only() -> None:
    table = tg.build_targets("numba")
    for target in table:
        assert target.backend == "numba"
        for job in target.jobs:
            assert job.backend == (None if job.kind == "peer" else "numba")


def test_multi_head_lstm_not_run_without_n_heads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tg, "heads_kwargs", lambda n_heads, d_model: None)
    target = find(tg.build_targets("torch"), "multi-head lstm", "ratio")
    (row,) = tg.evaluate([target], {}, LIMITS)
    assert row["status"] == "NOT RUN" and "n_heads=12" in row["margin"]


def _target(kind: str, threshold: float, n_jobs: int) -> tg.Target:
    jobs = tuple(tg.Job("layer", f"x{i}", Shape(1, 2, 3)) for i in range(n_jobs))
    return tg.Target("x", "x", "what", kind, threshold, jobs, "torch", "B1 T2 D3")


@pytest.mark.parametrize(
    ("kind", "threshold", "results", "value", "status", "margin"),
    [
        (
            "ratio",
            0.9,
            [{"fwd_bwd_tps": 45.0}, {"fwd_bwd_tps": 100.0}],
            0.45,
            "MISS",
            "needs x2.00",
        ),
        (
            "ratio",
            10,
            [{"fwd_bwd_tps": 300.0}, {"fwd_bwd_tps": 20.0}],
            15.0,
            "PASS",
            "x1.50 beyond",
        ),
        ("ratio", 2, [{"fwd_bwd_tps": 40.0}, {"fwd_bwd_tps": 20.0}], 2.0, "PASS", "x1.00 beyond"),
        # 1000 FLOPs/token x 2e7 tokens/s = 20 GFLOP/s of 100
        ("gemm", 0.4, [{"flops_per_token": 1000, "forward_tps": 2e7}], 0.2, "MISS", "needs x2.00"),
        # 6e9 bytes in 1 s of 10 GB/s
        ("bandwidth", 0.5, [{"bytes": 6e9, "forward_s": 1.0}], 0.6, "PASS", "x1.20 beyond"),
        # 1 MB of parameters is read in 100 us at 10 GB/s; a 300 us step is 3 times that
        ("step", 2, [{"step_s": 3e-4, "param_bytes": 1e6}], 3.0, "MISS", "needs x1.50"),
        ("step", 2, [{"step_s": 1e-4, "param_bytes": 1e6}], 1.0, "PASS", "x2.00 beyond"),
        ("memory", 0.5, [{"peak_mb": 3.0}, {"peak_mb": 3.25}], 0.25, "PASS", ""),
        ("memory", 0.5, [{"peak_mb": 3.0}, {"peak_mb": 5.0}], 2.0, "MISS", "by 1.50 MiB"),
    ],
)
def test_judging_fake_measurements(
    kind: str, threshold: float, results: list, value: float, status: str, margin: str
) -> None:
    target = _target(kind, threshold, len(results))
    (row,) = tg.evaluate([target], dict(zip(target.jobs, results)), LIMITS)
    assert row["value"] == pytest.approx(value)
    assert (row["status"], row["margin"]) == (status, margin)


@pytest.mark.parametrize(
    "second",
    [None, {"error": "RuntimeError: boom"}, {"status": "missing (module x is not installed)"}],
)
def test_failed_or_missing_measurement_is_not_run(second: dict | None) -> None:
    target = _target("ratio", 1.0, 2)
    results = {target.jobs[0]: {"fwd_bwd_tps": 1.0}}
    if second is not None:
        results[target.jobs[1]] = second
    (row,) = tg.evaluate([target], results, LIMITS)
    assert row["status"] == "NOT RUN" and row["value"] is None and row["margin"]


def test_judge_edges() -> None:
    assert tg.judge("ratio", None, 1.0) == ("NOT RUN", "")
    assert tg.judge("ratio", math.nan, 1.0) == ("NOT RUN", "")
    assert tg.judge("ratio", 0.0, 1.0)[0] == "MISS"
    assert tg.judge("step", 0.0, 2.0)[0] == "PASS"
    assert tg.judge("memory", -0.1, 0.5) == ("PASS", "")


def test_jobs_run_once_memory_last() -> None:
    table = tg.build_targets("torch") + tg.build_targets("numba")
    jobs = unique_jobs(table)
    assert len(jobs) == len(set(jobs))
    assert sum(j.kind == "peer" and j.option == "mingru-pytorch" for j in jobs) == 1
    kinds = [j.kind for j in jobs]
    assert "memory" not in kinds[: kinds.index("memory")] and set(
        kinds[kinds.index("memory") :]
    ) == {"memory"}


def test_backend_ratios() -> None:
    shape = Shape(1, 2, 3)
    fast = {
        tg.Job("layer", "a", shape, "torch"): {"fwd_bwd_tps": 10.0},
        tg.Job("layer", "a", shape, "numba"): {"fwd_bwd_tps": 30.0},
        tg.Job("step", "a", shape, "torch"): {"step_s": 4.0},
        tg.Job("step", "a", shape, "numba"): {"step_s": 1.0},
        tg.Job("step", "b", shape, "numba"): {"error": "x"},
    }
    ratios = [r["numba_over_torch"] for r in backend_ratios(fast)]
    assert ratios == [3.0, 4.0]


def test_tables_have_a_row_per_target() -> None:
    target = _target("ratio", 1.0, 2)
    rows = tg.evaluate([target, target], {}, LIMITS)
    text, markdown = tg.format_targets(rows), tg.format_markdown(rows)
    assert text.count("NOT RUN  not measured") == 2
    assert text.endswith("0 PASS, 0 MISS, 2 NOT RUN")
    assert markdown.startswith("| layer | target |") and markdown.count("\n| x |") == 2


def test_tiny_real_run() -> None:
    only = ("lstm", "mingru", "retnet", "scan")
    result = run_targets(measure_machine(quick=True), ["torch"], 1, TINY, only, progress=False)
    rows = result["targets"]
    assert {r["layer"] for r in rows} == set(only)
    for row in rows:
        assert row["status"] in ("PASS", "MISS"), row
        assert math.isfinite(row["value"])
    for m in result["measurements"]:
        assert "error" not in m, m
    json.dumps(result)  # JSON-ready


@pytest.mark.parametrize(
    "argv",
    [
        ["--layers", "nope"],
        ["--layers", ","],
        ["--repeats", "0"],
        ["--backend", "cuda"],
        ["--json", "/no/such/dir/x.json"],
        ["--markdown", "/no/such/dir/x.md"],
        ["--seq-lens", "8"],
    ],
)
def test_bad_arguments_one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "targets", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, err


def test_cli_writes_table_json_and_markdown(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, md = tmp_path / "t.json", tmp_path / "t.md"
    argv = ["bench", "targets", "--tiny", "--quick-machine", "--repeats", "1", "--layers", "gru"]
    assert main([*argv, "--backend", "torch", "--json", str(out), "--markdown", str(md)]) == 0
    captured = capsys.readouterr()
    assert "torch.nn.GRU" in captured.out and "[1/" in captured.err
    result = json.loads(out.read_text())
    assert {r["layer"] for r in result["targets"]} == {"gru"} and result["backends"] == ["torch"]
    assert md.read_text().startswith("| layer |")
