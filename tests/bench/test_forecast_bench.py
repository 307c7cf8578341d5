"""``statewise bench forecast`` on a tiny synthetic CSV (600 rows, 3 variates, so the
70/10/20 % split: 420 / 60 / 120 rows), input 16, horizons 4 and 8, one epoch: cells are
written and read back on a rerun, an interrupted cell is trained again, the JSON holds the
fields, the scores equal a reference computed from the public ``predict`` with numpy and
scipy, and bad input is refused naming the flag. No test asserts a score or a speed."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json

import numpy as np
import pytest
import torch

from statewise import Forecaster
from statewise.bench.forecast_cell import scored_test_split, split_parts
from statewise.bench.forecast_options import ForecastBench, cell_limits, cell_options, load_data
from statewise.bench.forecast_published import format_table
from statewise.cli import main
from statewise.estimators.forecast.arrays import context_inputs
from statewise.estimators.forecast.training import distribution
from statewise.tasks.forecast import windows

ROWS, N_TRAIN, N_VAL, N_TEST, L = 600, 420, 60, 120, 16
TINY = ["--input-len", str(L), "--d-model", "8", "--n-layers", "1", "--patch-len", "4"]
TINY += ["--epochs", "1", "--no-progress"]
CELLS = ["dlinear-h4.json", "dlinear-h8.json", "mingru-h4.json", "mingru-h8.json"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    """A daily cycle (period 24) per variate, a slow trend and noise."""
    rng = np.random.default_rng(0)
    t = np.arange(ROWS)[:, None]
    values = 2 * np.sin(2 * np.pi * t / 24 + np.arange(3)) + 0.01 * t
    values += 0.3 * rng.normal(size=values.shape)
    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    lines = ["date,a,b,c"] + [
        f"t{i}," + ",".join(f"{v:.6f}" for v in row) for i, row in enumerate(values)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def bench(csv, out, *flags: str) -> int:
    return main(["bench", "forecast", "--data", str(csv), *TINY, "--out", str(out), *flags])


@pytest.fixture(scope="module")
def finished(csv, tmp_path_factory):
    """One run of 2 layers x 2 horizons: (out directory, the --json summary, stdout)."""
    root = tmp_path_factory.mktemp("run")
    flags = ["--layers", "mingru,dlinear", "--horizons", "4,8", "--json", str(root / "run.json")]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        rc = bench(csv, root / "out", *flags)
    assert rc == 0
    return root / "out", json.loads((root / "run.json").read_text()), printed.getvalue()


def refuse_training(monkeypatch):
    def fit(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(Forecaster, "fit", fit)


def test_cells_are_written_then_read_back_on_a_rerun(finished, csv, tmp_path, monkeypatch, capsys):
    out, summary, printed = finished
    assert sorted(p.name for p in out.iterdir()) == CELLS
    by_file = {p.name: json.loads(p.read_text()) for p in out.iterdir()}
    assert summary["cells"] == [by_file[n] for n in (CELLS[2], CELLS[3], CELLS[0], CELLS[1])]
    for cell in summary["cells"]:
        assert f"{cell['test']['mse']:.3f} / {cell['test']['mae']:.3f}" in printed
    refuse_training(monkeypatch)
    again = tmp_path / "again.json"
    rc = bench(csv, out, "--layers", "mingru,dlinear", "--horizons", "4,8", "--json", str(again))
    assert rc == 0
    assert capsys.readouterr().err.count("done before, read from") == 4
    assert json.loads(again.read_text())["cells"] == summary["cells"]


def test_a_cell_holds_its_configuration_and_scores(finished, csv):
    out, summary, _ = finished
    mingru = json.loads((out / "mingru-h4.json").read_text())
    digest = hashlib.sha256(csv.read_bytes()).hexdigest()
    assert mingru["settings"]["data_sha256"] == digest == summary["data"]["sha256"]
    assert mingru["settings"]["limits"] == {"epochs": 1, "budget_s": None}
    assert mingru["config"]["mode"] == "channel_independent" and mingru["config"]["revin"]
    assert mingru["config"]["loss"] == "studentt" and mingru["config"]["patch_stride"] == 2
    assert summary["data"]["split"] == [N_TRAIN, N_VAL, N_TEST]
    steps = -(-(N_TRAIN - L - 4 + 1) // 32)  # one epoch of 401 windows, batch 32
    assert mingru["steps"] == steps and mingru["epochs"] == 1.0
    curve = dict(mingru["val_curve"])
    assert mingru["best_step"] == min(curve, key=curve.get) and steps in curve
    assert mingru["val"]["windows"] == N_VAL - 4 + 1
    assert mingru["test"]["windows"] == N_TEST - 4 + 1
    assert mingru["test"]["drop_last"]["dlinear_8"]["windows"] == (N_TEST - 3) // 8 * 8
    assert mingru["test"]["drop_last"]["patchtst_128"] == {"windows": 0}  # 117 < 128
    assert mingru["train_s"] > 0 and mingru["tokens_per_s"] > 0
    assert set(mingru["probabilistic"]) == {
        "level",
        "coverage",
        "crps",
        "gaussian_coverage",
        "gaussian_crps",
    }
    dlinear = json.loads((out / "dlinear-h8.json").read_text())
    assert dlinear["config"]["loss"] == "mse" and not dlinear["config"]["subtract_last"]
    assert dlinear["probabilistic"] is None and dlinear["test"]["windows"] == N_TEST - 8 + 1


def test_an_interrupted_cell_is_trained_again(csv, tmp_path, monkeypatch, capsys):
    out, real_fit, calls = tmp_path / "out", Forecaster.fit, []

    def interrupted_second_fit(self, *args, **kwargs):
        calls.append(self.horizon)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(Forecaster, "fit", interrupted_second_fit)
    assert bench(csv, out, "--layers", "dlinear", "--horizons", "4,8") == 130
    assert "dlinear h=8: interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["dlinear-h4.json"]
    first = (out / "dlinear-h4.json").read_text()
    (out / "dlinear-h8.json.tmp").write_text('{"settings": {')  # a write cut short
    (out / "dlinear-h8.json").write_text('{"settings": {')  # unreadable: trained again too
    calls.clear()
    assert bench(csv, out, "--layers", "dlinear", "--horizons", "4,8") == 0
    assert calls == [8] and "unreadable, the cell is trained again" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["dlinear-h4.json", "dlinear-h8.json"]
    assert (out / "dlinear-h4.json").read_text() == first
    assert json.loads((out / "dlinear-h8.json").read_text())["horizon"] == 8


def test_scores_equal_a_reference_from_predict(csv):
    """MSE / MAE (all windows and drop_last), coverage and CRPS of the Student-t head and of
    the Gaussian of the training residuals, against numpy / scipy on f.predict's output."""
    stats = pytest.importorskip("scipy.stats")
    H = 4
    data = load_data(str(csv))
    parts = split_parts(data, L)
    options = cell_options(ForecastBench(str(csv), d_model=8, n_layers=1, patch_len=4), "mingru")
    f = Forecaster("mingru", L, H, **options).fit(parts.train, max_steps=30, progress=False)
    train = data[:N_TRAIN].numpy()
    mean, std = train.mean(0), train.std(0)  # ddof 0, the training rows only

    def scaled_windows(part: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, y = windows(part, L, H)
        point = f.predict(x.numpy())
        return (x.numpy() - mean) / std, (y.numpy() - mean) / std, (point - mean) / std

    x, y, point = scaled_windows(parts.test)
    got, check = scored_test_split(f, parts.train, parts.test)
    # rel 1e-6: both paths run the float32 network on the same float32 inputs
    assert got["windows"] == len(y) == N_TEST - H + 1
    assert got["mse"] == pytest.approx(np.mean((point - y) ** 2), rel=1e-6)
    assert got["mae"] == pytest.approx(np.mean(np.abs(point - y)), rel=1e-6)
    kept = len(y) // 8 * 8
    assert got["drop_last"]["dlinear_8"]["mse"] == pytest.approx(
        np.mean((point[:kept] - y[:kept]) ** 2), rel=1e-6
    )
    assert check["crps"] == pytest.approx(f.evaluate(parts.test)["crps"], rel=1e-6)

    with torch.no_grad():
        params = distribution(f.model, f.family, context_inputs(torch.tensor(x), H)).double()
    loc, scale, df = params.unbind(-1)
    p = stats.t.cdf((y - loc.numpy()) / scale.numpy(), df.numpy())
    # abs 1 / n: a target within float32 rounding of an interval end may fall either side
    n = y.size
    assert check["coverage"] == pytest.approx(np.mean((p >= 0.1) & (p <= 0.9)), abs=1 / n)

    _, y_train, point_train = scaled_windows(parts.train)
    sd = np.sqrt(np.mean((y_train - point_train) ** 2, axis=0))  # (H, K)
    z = stats.norm.ppf(0.9)
    inside = np.abs(y - point) <= z * sd
    assert check["gaussian_coverage"] == pytest.approx(inside.mean(), abs=1 / n)
    u = (y - point) / sd
    crps = sd * (u * (2 * stats.norm.cdf(u) - 1) + 2 * stats.norm.pdf(u) - 1 / np.sqrt(np.pi))
    assert check["gaussian_crps"] == pytest.approx(crps.mean(), rel=1e-6)


def test_a_rerun_with_other_settings_is_refused(finished, csv, capsys):
    out = finished[0]
    before = {p.name: p.read_text() for p in out.iterdir()}
    flags = ["--layers", "mingru,dlinear", "--horizons", "4,8", "--epochs", "2"]
    assert main(["bench", "forecast", "--data", str(csv), *TINY, "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert "holds a result made with other settings (limits)" in err
    assert {p.name: p.read_text() for p in out.iterdir()} == before


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--horizons", "0"], "--horizons must be positive ints"),
        (["--horizons", "4,4"], "--horizons must be distinct"),
        (["--horizons", "a"], "--horizons 'a': not a list of ints"),
        (["--horizons", "100"], "needs >= 116 training rows and >= 100 validation and test"),
        (["--layers", "nope", "--horizons", "4"], "--layers: unknown layer 'nope'"),
        (["--horizons", "4", "--epochs", "0"], "layer lstm: epochs must be positive"),
        (["--horizons", "4", "--patch-len", "32"], "patch_len must be <= input_len"),
        (["--horizons", "4", "--threads", "0"], "--threads must be >= 1"),
        (["--horizons", "4", "--dropout", "nan"], "model.dropout must be a finite number"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(csv, tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    assert bench(csv, out, *flags) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bad_data_files_are_refused(tmp_path, capsys):
    words = tmp_path / "words.csv"
    words.write_text("date,a\nmonday,one\n")
    for path, message in (
        (tmp_path / "none.csv", "--data: no file"),
        (words, "not a CSV of numbers"),
    ):
        assert main(["bench", "forecast", "--data", str(path), "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err


def test_the_table_marks_cells_not_run_and_shows_the_published_rows(finished):
    summary = dict(finished[1], data={"name": "ETTh1.csv"}, horizons=[4, 96])
    summary["cells"] = [c for c in summary["cells"] if c["horizon"] == 4]
    table = format_table(summary).splitlines()
    mingru = next(line for line in table if line.startswith("mingru "))
    assert mingru.rstrip().endswith("not run")
    patchtst = next(line for line in table if line.startswith("PatchTST/64 (published)"))
    assert patchtst.split()[-3:] == ["0.370", "/", "0.400"]
    assert "not copied" in next(line for line in table if line.startswith("xLSTMTime"))


def test_the_defaults_are_the_chosen_configuration_and_off_values_keep_stored_settings(csv):
    chosen = cell_options(ForecastBench(str(csv)), "lru")
    assert (chosen["d_model"], chosen["dropout"], chosen["linear_skip"]) == (16, 0.3, True)
    assert cell_limits(ForecastBench(str(csv)), "lru") == {"epochs": 10, "budget_s": 1200.0}
    assert cell_limits(ForecastBench(str(csv)), "dlinear") == {"epochs": 10, "budget_s": None}
    assert cell_limits(ForecastBench(str(csv), budget_s=60), "lru") == {
        "epochs": None,
        "budget_s": 60,
    }
    # dropout 0 and no skip leave their keys out, as the cells stored before the flags did
    plain = cell_options(ForecastBench(str(csv), d_model=64, dropout=0, linear_skip=False), "lru")
    assert not {"lr", "dropout", "linear_skip"} & set(plain) and plain["d_model"] == 64
    tuned = cell_options(
        ForecastBench(str(csv), d_model=64, lr=3e-4, dropout=0.2, linear_skip=False), "lru"
    )
    assert tuned == {**plain, "lr": 3e-4, "dropout": 0.2}
    f = Forecaster("lru", L, 4, **tuned)
    assert f.options["lr"] == 3e-4 and f.options["model_kwargs"]["dropout"] == 0.2
    assert Forecaster("lru", L, 4, **chosen).options["linear_skip"] is True
    dlinear = cell_options(ForecastBench(str(csv), lr=3e-4), "dlinear")
    assert dlinear["loss"] == "mse" and "linear_skip" not in dlinear and "dropout" not in dlinear


def test_negbin_asks_for_no_linear_skip(csv, capsys):
    assert main(["bench", "forecast", "--data", str(csv), "--loss", "negbin"]) == 2
    assert "--no-linear-skip" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["bench", "forecast", "--data", "{csv}"], "finished cells are kept"),
        (["models"], "nothing was saved"),
    ],
)
def test_an_interrupted_command_says_what_it_kept(csv, monkeypatch, capsys, argv, said):
    import statewise.bench.forecast as bench_forecast
    from statewise import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_forecast, "run_forecast_bench", interrupted)
    monkeypatch.setitem(cli.COMMANDS, "models", interrupted)
    assert cli.main([a.format(csv=csv) for a in argv]) == 130
    assert said in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "skip"), [((), True), (("--no-linear-skip",), False)])
def test_the_linear_skip_flag_reaches_the_stored_cell(csv, tmp_path, flags, skip):
    out = tmp_path / "out"
    assert bench(csv, out, "--layers", "mingru", "--horizons", "4", *flags) == 0
    cell = json.loads((out / "mingru-h4.json").read_text())
    assert cell["config"]["linear_skip"] is skip
    assert cell["settings"]["options"].get("linear_skip", False) is skip
