"""``statewise bench speed`` end to end on tiny shapes: the fields, finite positive numbers,
ratios equal to ours/peer, one-line errors. No test asserts a speed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from statewise import kernels
from statewise.bench import peers
from statewise.bench.speed import Shape, chunk_flops_per_token, scan_bytes_per_token
from statewise.cli import main
from statewise.layers import get

TINY = ["--batch", "2", "--seq-lens", "8,12", "--d-model", "16", "--repeats", "1"]
ROW_FIELDS = {
    "layer",
    "batch",
    "seq_len",
    "d_model",
    "mode",
    "backend",
    "forward_tps",
    "fwd_bwd_tps",
}


def positive(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "speed.json"
    argv = ["bench", "speed", "--layers", "lstm,mingru,lru,retnet", *TINY]
    assert main([*argv, "--peers", "--quick-machine", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_json_has_machine_and_every_cell(result: dict) -> None:
    assert result["options"]["seq_lens"] == [8, 12] and result["options"]["peers"] is True
    machine = result["machine"]
    assert positive(machine["gemm_gflops"]) and positive(machine["bandwidth_gbs"])
    cells = {(r["layer"], r["seq_len"]) for r in result["results"]}
    assert cells == {(n, t) for n in ("lstm", "mingru", "lru", "retnet") for t in (8, 12)}
    for row in result["results"]:
        assert "error" not in row, row
        assert ROW_FIELDS <= set(row)
        for key in ("forward_tps", "fwd_bwd_tps", "step_us"):
            assert positive(row[key]), (key, row)
        if result["memory_measured"]:
            assert row["peak_mb"] >= 0 and math.isfinite(row["peak_mb"])


def test_limits_fractions(result: dict) -> None:
    rows = {r["layer"]: r for r in result["results"] if r["seq_len"] == 12}
    assert positive(rows["retnet"]["gemm_fraction"]) and positive(rows["retnet"]["flops_per_token"])
    for name in ("mingru", "lru"):
        assert positive(rows[name]["bandwidth_fraction"])
        assert "gemm_fraction" not in rows[name]
    assert "gemm_fraction" not in rows["lstm"] and "bandwidth_fraction" not in rows["lstm"]
    r = rows["retnet"]
    expected = r["flops_per_token"] * r["forward_tps"] / (result["machine"]["gemm_gflops"] * 1e9)
    assert r["gemm_fraction"] == pytest.approx(expected)


def test_peer_ratios_are_ours_over_peer(result: dict) -> None:
    seen = set()
    for row in result["results"]:
        names = [p["peer"] for p in row["peers"]]
        assert names == [p.name for p in peers.peers_for(row["layer"])]
        for p in row["peers"]:
            if p["status"].startswith("missing"):
                continue
            assert p["status"] == "ok", p
            seen.add(p["peer"])
            for key in ("forward", "fwd_bwd"):
                if p[f"{key}_tps"] is None:  # a peer timed forward only at this length
                    assert key == "fwd_bwd" and p[f"{key}_ratio"] is None
                    continue
                assert positive(p[f"{key}_tps"])
                assert p[f"{key}_ratio"] == pytest.approx(row[f"{key}_tps"] / p[f"{key}_tps"])
    assert {"torch.nn.LSTM", "eager loop"} <= seen


def test_missing_peer_is_reported_not_raised() -> None:
    ghost = peers.Peer("ghost", "no_such_module_statewise", lambda s, ours: None)
    out = peers.time_peer(ghost, get("gru", 8), Shape(1, 4, 8), 1)
    assert out["status"].startswith("missing")
    assert peers.with_ratios(out, {"forward_tps": 1.0}) == out  # no ratio without a time


@pytest.mark.slow  # imports transformers and xlstm: ~15 s
@pytest.mark.parametrize("layer", sorted(peers.PEERS))
def test_every_peer_runs_or_is_missing(layer: str) -> None:
    """Each peer builds from our layer's configuration and maps (B, T, D) to (B, T, D)."""
    shape = Shape(1, 6, 64)
    ours = get(layer, 64)
    for peer in peers.peers_for(layer):
        out = peers.time_peer(peer, ours, shape, 1)
        assert out["status"] == "ok" or out["status"].startswith("missing"), out


def test_eager_loops_follow_our_heads() -> None:
    loop = peers.PEERS["slstm"][0].build(Shape(1, 3, 64), get("slstm", 64, n_heads=2))
    assert loop.n_heads == 2 and loop(torch.randn(1, 3, 64)).shape == (1, 3, 64)
    lstm = peers.EagerLSTM(64, n_heads=4)
    assert lstm(torch.randn(2, 3, 64)).shape == (2, 3, 64)


@pytest.mark.skipif("numba" not in kernels.available(), reason="numba is not installed")
def test_backend_both_reports_numba_over_torch(tmp_path: Path) -> None:
    out = tmp_path / "both.json"
    argv = ["bench", "speed", "--layers", "mingru", "--backend", "both", "--quick-machine"]
    assert main([*argv, *TINY, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["backends"] == ["torch", "numba"]
    rows = {(r["backend"], r["seq_len"]): r for r in result["results"]}
    assert set(rows) == {(b, t) for b in ("torch", "numba") for t in (8, 12)}
    for t in (8, 12):
        fast, base = rows["numba", t], rows["torch", t]
        assert "vs_torch" not in base
        ratio = fast["vs_torch"]["fwd_bwd_ratio"]
        assert ratio == pytest.approx(fast["fwd_bwd_tps"] / base["fwd_bwd_tps"])


def test_backend_not_installed_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(kernels, "available", lambda: ("torch",))
    assert main(["bench", "speed", "--backend", "numba", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert "numba" in err and "\n" not in err


def test_table_on_stdout(capsys: pytest.CaptureFixture) -> None:
    argv = ["bench", "speed", "--layers", "gru", "--quick-machine", *TINY]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "fwd tok/s" in captured.out and "gru" in captured.out
    assert "[1/" in captured.err  # progress goes to stderr


def test_work_counts() -> None:
    retnet = get("retnet", 16, n_heads=2, chunk_size=4)
    # dense: 2 x weights; mixing per head: 2C(K+V) + 4KV with C=4, K=V=8
    dense = 2 * sum(p.numel() for p in retnet.parameters() if p.dim() >= 2)
    assert chunk_flops_per_token("retnet", retnet, 100) == dense + 2 * (2 * 4 * 16 + 4 * 64)
    assert scan_bytes_per_token("mingru", get("mingru", 16), 4) == 3 * 16 * 4
    assert chunk_flops_per_token("lstm", get("lstm", 16), 100) is None


@pytest.mark.parametrize(
    "argv",
    [
        ["--layers", "nope"],
        ["--seq-lens", "a,b"],
        ["--seq-lens", ","],
        ["--seq-lens", "0"],
        ["--batch", "0"],
        ["--d-model", "-1"],
        ["--repeats", "0"],
        ["--json", "/no/such/dir/x.json"],
        ["--bogus"],
        ["--backend", "cuda"],
    ],
)
def test_bad_arguments_one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "speed", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, err


def test_bench_needs_a_subcommand(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench"]) == 2
    assert "\n" not in capsys.readouterr().err.strip()


def test_dtype_bfloat16_reports_the_speedup(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bf16.json"
    argv = ["bench", "speed", "--layers", "mingru,retnet", "--dtype", "bfloat16"]
    assert main([*argv, "--quick-machine", *TINY, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["options"]["dtype"] == "bfloat16"
    for row in result["results"]:
        assert positive(row["bf16_fwd_tps"]) and positive(row["bf16_fwd_bwd_tps"])
        assert row["bf16_speedup"] == pytest.approx(row["bf16_fwd_bwd_tps"] / row["fwd_bwd_tps"])
    assert "bf16 fwd+bwd" in capsys.readouterr().out


def test_delta_rule_chunk_flops_count_the_chunk_work():
    """The delta rule's chunk form does its projections and, per head, work growing with the
    chunk length; its recurrent mode has no chunk count."""
    from statewise import layers
    from statewise.bench import speed

    layer = layers.get("deltanet", 64, n_heads=2, chunk_size=16)
    dense = speed.dense_flops_per_token(layer)
    short = speed.chunk_flops_per_token("deltanet", layer, 8, "chunk")
    full = speed.chunk_flops_per_token("deltanet", layer, 4096, "chunk")
    assert dense < short and dense < full
    # K = V = 32 per head, C = 16: 2CK K K^T + C(V+K) solve + 2CK Q K^T + 2C(V+K) + 2K(V+K)
    # + 2KV + 2K^2 V / C, written out: 1024 + 1024 + 1024 + 2048 + 4096 + 2048 + 4096
    assert full - dense == 2 * (1024 + 1024 + 1024 + 2048 + 4096 + 2048 + 4096)
    assert speed.chunk_flops_per_token("deltanet", layer, 4096, "recurrent") is None
