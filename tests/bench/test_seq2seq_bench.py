"""python -m statewise.bench.seq2seq: runs parse, and a tiny run reports its scores."""

import argparse
import json

import pytest

from statewise.bench.seq2seq import main, parse_run


def test_parse_run():
    assert parse_run("reverse@30") == ("reverse", 30) and parse_run("date") == ("date", None)
    for bad in ("reverse", "date@3", "copy@3", "add@x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_run(bad)


def test_a_tiny_run_writes_a_json_line(tmp_path, capsys):
    out = tmp_path / "runs.jsonl"
    args = "reverse@3 --d-model 8 --steps 3 --train-pairs 50 --test-pairs 5 --no-progress"
    assert main([*args.split(), "--json", str(out)]) == 0
    (line,) = out.read_text().splitlines()
    result = json.loads(line)
    assert result["run"] == "reverse@3" and result["steps"] == 3
    assert 0 <= result["exact_match"] <= 1 and result["cer"] >= 0
    assert "exact_match=" in capsys.readouterr().out
