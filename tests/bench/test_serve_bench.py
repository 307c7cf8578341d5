"""``statewise bench serve``: one quick run against a real ``statewise serve`` subprocess,
the transformers comparison on tiny models, and the computed tables. No test asserts a
speed: they check the fields, the counts, that every number is finite and positive, and
that no request was lost or mixed up and no server process is left behind."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")

from statewise.bench import serve as sb  # noqa: E402
from statewise.cli import main  # noqa: E402


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def children() -> list[str]:
    """Process ids of this process's living children (every thread's)."""
    out: list[str] = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            out += (task / "children").read_text().split()
        except OSError:
            pass
    return out


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_quick_run_measures_every_phase_and_loses_nothing(tmp_path, capsys) -> None:
    before = children()
    out = tmp_path / "serve.json"
    assert main(["bench", "serve", "--quick", "--no-hf", "--json", str(out)]) == 0
    assert children() == before, "a server process was left behind"
    table = capsys.readouterr().out
    assert "load generator 1 (asyncio)" in table and "server torch 1" in table
    result = json.loads(out.read_text())
    opts = sb.Options.quick()
    assert result["threads"]["server_torch_threads"] == 1
    (layer,) = result["layers"]
    assert layer["layer"] == "mingru" and "error" not in layer
    assert positive(layer["state_bytes_per_stream"])
    assert 0 <= layer["fused_decode_max_batch"] <= layer["max_batch"]  # 0: PyTorch was faster
    assert [r["streams"] for r in layer["concurrency"]] == opts.concurrency
    for row in layer["concurrency"]:
        n = row["streams"] * opts.requests_per_stream
        assert row["requests"] == row["sent"] == row["completed"] == n
        assert row["lost"] == row["errors"] == row["wrong_token_count"] == 0
        assert row["generated_tokens"] == n * opts.max_tokens
        assert row["checked"] == min(n, opts.check_sample) and row["mismatched"] == 0
        for key in ("tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms"):
            assert positive(row[key]), key
        assert row["ttft_p50_ms"] <= row["ttft_p99_ms"] and row["itl_p50_ms"] <= row["itl_p99_ms"]
        assert positive(row["rss_peak_mib"])
    base = layer["one_at_a_time"]
    assert base["completed"] == opts.baseline_requests and positive(base["tokens_per_s"])
    cache = layer["prefix_cache"]
    assert cache["prompt_tokens"] == opts.cache_prompt_tokens
    assert cache["cache_hits"] == 1, "the repeated prompt did not hit the prefix cache"
    assert positive(cache["ttft_miss_ms"]) and positive(cache["ttft_hit_ms"])
    churn = layer["churn"]
    left = opts.churn_requests // 10
    assert churn["requests"] == churn["sent"] == opts.churn_requests
    assert churn["cancelled_by_client"] == left
    assert churn["completed"] == opts.churn_requests - left
    assert churn["lost"] == churn["errors"] == churn["mismatched"] == 0
    # a client that leaves after its first piece may leave after the server has already
    # finished its few tokens: the server then counts it "length", not "cancelled"
    finished = churn["server_finished"]
    assert finished.get("length", 0) + finished.get("cancelled", 0) == opts.churn_requests
    assert finished.get("length", 0) >= churn["completed"]
    assert churn["running_after"] == churn["waiting_after"] == 0
    assert churn["checked"] > 0 and churn["rss_back_to_idle"] is True
    verdicts = {t["target"]: t for t in result["targets"]}
    assert len(verdicts) == 3 and all(t["verdict"] in ("PASS", "MISS") for t in verdicts.values())
    (churn_target,) = [t for w, t in verdicts.items() if "churn" in w]
    assert churn_target["verdict"] == "PASS"
    mem = result["memory"]
    assert "attention" not in mem["state_bytes"] and "mamba" in mem["state_bytes"]


def test_transformers_comparison_on_tiny_models(tmp_path) -> None:
    pytest.importorskip("transformers")
    opts = sb.Options(d_model=32, n_layers=2, hf_new_tokens=8, hf_repeats=1)
    rows = {r["model"]: r for r in sb.bench_transformers(opts, tmp_path, lambda msg: None)}
    assert set(rows) == {"mamba", "recurrentgemma"}
    for row in rows.values():
        assert "error" not in row, row
        assert positive(row["transformers_tokens_per_s"]) and positive(
            row["statewise_tokens_per_s"]
        )
        assert row["ratio"] == pytest.approx(
            row["statewise_tokens_per_s"] / row["transformers_tokens_per_s"]
        )
    # the converted weights are the same function: greedy tokens agree
    assert rows["mamba"]["same_tokens"] is True


def test_memory_table_and_judging() -> None:
    mem = sb.memory_table(64, 3)
    assert mem["attention_kv_bytes"]["2048"] == 2 * 3 * 2048 * 64 * 4
    assert mem["state_bytes"]["mingru"] == 64 * 3 * 4  # state_size d
    assert mem["state_bytes"]["lstm"] == 2 * 64 * 3 * 4
    row = {"tokens_per_s": 100.0}
    result = {
        "layers": [
            {
                "layer": "lstm",
                "concurrency": [{**row, "streams": 1}, {"streams": 32, "tokens_per_s": 1500.0}],
                "one_at_a_time": row,
                "prefix_cache": {"prompt_tokens": 2048, "ratio": 12.0},
            },
            {"layer": "rwkv", "error": "RuntimeError: no server"},
        ],
        "transformers": [{"model": "mamba", "ratio": 3.5}],
    }
    got = [(t["ratio"], t["verdict"]) for t in sb.judge(result)]
    assert got == [(15.0, "PASS"), (12.0, "MISS"), (3.5, "PASS")]
    assert sb.quantile([3.0, 1.0, 2.0], 0.5) == 2.0 and sb.quantile([], 0.5) is None
    assert sb.quantile([0.0, 10.0], 0.99) == pytest.approx(9.9)


def test_options_are_checked(capsys) -> None:
    for bad, said in (
        (["--concurrency", "0"], "concurrency must be in 1..1024"),
        (["--max-tokens", "0"], "max-tokens must be >= 1"),
        (["--layers", "nope"], "unknown layer 'nope'"),
    ):
        assert main(["bench", "serve", *bad]) == 2
        assert said in capsys.readouterr().err


def test_quick_refuses_sizes_it_would_ignore(capsys) -> None:
    assert main(["bench", "serve", "--quick", "--concurrency", "1,8", "--time-cap-s", "5"]) == 2
    err = capsys.readouterr().err
    assert "--concurrency" in err and "--time-cap-s" in err and "\n" not in err.strip()
