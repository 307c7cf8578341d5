"""Curves people look at: seconds in metrics.jsonl, TensorBoard events, ``statewise plot``,
and progress output that is a bar on a terminal and plain lines anywhere else."""

from __future__ import annotations

import io
import re
import struct
import sys
from pathlib import Path

import pytest
from matplotlib.colors import to_rgba

from statewise.cli import main
from statewise.errors import ConfigError
from statewise.train import checkpoint
from statewise.train.config import LogConfig, load_config, parse_config
from statewise.train.plot import DPI, FIGSIZE, PANELS, plot_runs
from statewise.train.progress import BarProgress, LineProgress, QuietProgress, make_progress
from statewise.train.trainer import train
from tests.run_dirs import file_bytes

STEPS = 20  # the tiny config logs every 5 steps and evaluates at step 20
LINE = re.compile(
    r"step (\d+)/20  loss \d+\.\d{4}  lr \d\.\d\de[-+]\d\d  [\d,]+ tok/s  \d+:\d\d:\d\d"
)


@pytest.fixture(autouse=True)
def not_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)


def _train(tiny_config, out: Path, *overrides: str, layer: str = "mingru", **kwargs) -> dict:
    config = load_config(tiny_config(layer=layer, steps=STEPS, name=f"{layer}.toml"), overrides)
    return train(config, out, **kwargs)


# ----------------------------------------------------------------- metrics and progress
def test_lines_per_log_interval_when_stderr_is_not_a_terminal(tmp_path, tiny_config, capsys):
    out = tmp_path / "run"
    _train(tiny_config, out, progress=True)  # capsys: stderr is not a tty
    err = capsys.readouterr().err
    assert "\r" not in err, "a bar was redrawn into a file"
    lines = [line for line in err.splitlines() if line.startswith("step ")]
    assert all(LINE.fullmatch(line) for line in lines), lines
    assert [int(LINE.fullmatch(line).group(1)) for line in lines] == [5, 10, 15, 20]

    records = checkpoint.load_metrics(out)
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    seconds = [r["seconds"] for r in records]
    assert all(s > 0 for s in seconds) and seconds == sorted(seconds)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _feed(progress) -> None:
    for step in range(1, 11):
        progress.update(step, 2.5, 1e-3, 1234.0, step * 0.5, log=step % 5 == 0)
    progress.close()


def test_a_bar_on_a_terminal_plain_lines_in_ci(monkeypatch):
    tty = Terminal()
    progress = make_progress(10, stream=tty)
    assert isinstance(progress, BarProgress)
    _feed(progress)
    assert "\r" in tty.getvalue() and "10/10" in tty.getvalue()

    monkeypatch.setenv("CI", "true")
    tty = Terminal()
    progress = make_progress(10, stream=tty)
    assert isinstance(progress, LineProgress)
    _feed(progress)
    assert tty.getvalue().splitlines() == [
        "step 5/10  loss 2.5000  lr 1.00e-03  1,234 tok/s  0:00:02",
        "step 10/10  loss 2.5000  lr 1.00e-03  1,234 tok/s  0:00:05",
    ]

    monkeypatch.setenv("CI", "false")
    assert isinstance(make_progress(10, stream=Terminal()), BarProgress)
    quiet = Terminal()
    progress = make_progress(10, enabled=False, stream=quiet)
    assert isinstance(progress, QuietProgress)
    _feed(progress)
    assert quiet.getvalue() == ""


# ----------------------------------------------------------------------- [log] section
def test_log_section_is_checked():
    assert parse_config(b"", "c.toml").log == LogConfig(tensorboard=False)
    assert parse_config(b"", "c.toml", ["log.tensorboard=true"]).log.tensorboard is True
    with pytest.raises(ConfigError, match="log.tensorboard must be bool"):
        parse_config(b'[log]\ntensorboard = "yes"\n', "c.toml")
    with pytest.raises(ConfigError, match="unknown key log.colour"):
        parse_config(b"[log]\ncolour = 1\n", "c.toml")
    with pytest.raises(ConfigError, match="log.tensorboard must be true or false"):
        LogConfig(tensorboard="yes")


def test_tensorboard_events_hold_the_logged_scalars(tmp_path, tiny_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    _train(tiny_config, out, "log.tensorboard=true", progress=False)
    assert checkpoint.holds_other_files(out) == []  # DIR/tensorboard belongs to the run
    events = EventAccumulator(str(out / checkpoint.TENSORBOARD))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/tokens_per_s", "val/loss", "val/accuracy"} <= tags
    records = checkpoint.load_metrics(out)
    logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in logged] == [r["step"] for r in records]
    for (_, value), record in zip(logged, records):
        assert value == pytest.approx(record["loss"], rel=1e-6)  # stored as float32
    (val,) = events.Scalars("val/loss")
    assert (val.step, val.value) == (STEPS, pytest.approx(records[-1]["val_loss"], rel=1e-6))

    # killed after step 20 was logged but before its checkpoint: the resumed run logs
    # steps 15 and 20 again, and TensorBoard shows each step once
    newest = checkpoint.latest(out)
    for path in sorted(newest.iterdir()):
        path.unlink()
    newest.rmdir()
    _train(tiny_config, out, "log.tensorboard=true", progress=False, resume=True)
    events = EventAccumulator(str(out / checkpoint.TENSORBOARD))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [5, 10, 15, 20]


def test_tensorboard_missing_is_a_config_error(tmp_path, tiny_config, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard fails
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        _train(tiny_config, out, "log.tensorboard=true", progress=False)
    assert not out.exists()
    config = tiny_config(steps=STEPS)
    code = main(["train", str(config), "--out", str(out), "--log.tensorboard=true"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "pip install tensorboard" in err
    assert not out.exists()


# ------------------------------------------------------------------------ statewise plot
def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plot_overlays_runs_and_changes_nothing(tmp_path, tiny_config, capsys):
    runs = [tmp_path / "a", tmp_path / "b"]
    _train(tiny_config, runs[0], progress=False)
    _train(tiny_config, runs[1], layer="lstm", progress=False)
    before = [file_bytes(run) for run in runs]

    png = tmp_path / "curves.png"
    fig = plot_runs(runs, png)
    assert _png_size(png) == (FIGSIZE[0] * DPI, FIGSIZE[1] * DPI)
    assert [ax.get_title() for ax in fig.axes] == [title for _, _, title, _ in PANELS]
    labels = ["a (mingru)", "b (lstm)"]
    colours = {}
    for ax in fig.axes:
        assert [line.get_label() for line in ax.get_lines()] == labels, ax.get_title()
        for line in ax.get_lines():
            colours.setdefault(line.get_label(), set()).add(to_rgba(line.get_color()))
    assert all(len(c) == 1 for c in colours.values())  # one colour per run, every panel
    assert len(set().union(*colours.values())) == 2
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == labels
    train_loss, val_loss, _, speed, _, _ = fig.axes
    records = checkpoint.load_metrics(runs[0])
    assert list(train_loss.get_lines()[0].get_xdata()) == [r["step"] for r in records]
    assert list(val_loss.get_lines()[0].get_ydata()) == [records[-1]["val_loss"]]
    assert list(speed.get_lines()[0].get_ydata()) == [r["tokens_per_s"] for r in records]

    assert main(["plot", *map(str, runs), "--out", str(tmp_path / "cli.png")]) == 0
    assert _png_size(tmp_path / "cli.png") == _png_size(png)
    assert [file_bytes(run) for run in runs] == before  # reading changed nothing
    capsys.readouterr()


def test_plot_refuses_what_is_not_a_run(tmp_path, tiny_config, capsys):
    run = tmp_path / "a"
    _train(tiny_config, run, progress=False)
    (tmp_path / "empty").mkdir()
    before = file_bytes(run)
    png = str(tmp_path / "x.png")
    for argv, message in [
        ([str(tmp_path / "empty"), "--out", png], "not a statewise checkpoint"),
        ([str(tmp_path / "missing"), "--out", png], "does not exist"),
        ([str(run), str(run), "--out", png], "same run directory"),
        ([str(run), "--out", str(run / "curves.png")], "inside run directory"),
        ([str(run), "--out", str(tmp_path / "curves.svg")], "must be a .png file"),
        ([str(run), "--out", str(tmp_path / "no" / "c.png")], "no directory"),
    ]:
        code = main(["plot", *argv])
        err = capsys.readouterr().err
        assert code == 2 and len(err.splitlines()) == 1 and message in err, (argv, err)
    assert file_bytes(run) == before
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "curves.svg").exists()
