"""Property-based tests of what parses and validates input: random TOML configs, random
and truncated bytes as each checkpoint file, random command lines.

Each example either works or raises the documented error (an ``InputError``; exit code 2
with one line on the command line): never a traceback, a hang or a changed file. Command
bodies that would train or benchmark for long are stubbed out; everything that reads and
checks input runs for real. The default run draws a few dozen examples per test,
reproducibly (derandomized); ``-m slow`` draws many more.
"""

from __future__ import annotations

import io
import math
import shutil
import tempfile
from pathlib import Path

import pytest
import tomli_w
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from statewise import arena, cli
from statewise.errors import InputError
from statewise.models import build_model
from statewise.train import checkpoint, trainer
from statewise.train.config import SECTIONS, config_from_dict, load_config
from tests.run_dirs import file_bytes, rewrite

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
CI = settings(FUZZ, max_examples=40)
SLOW = settings(FUZZ, max_examples=600)


def slow_variant(test, **strategies):
    """The same property over the same strategies with many more examples, under -m slow."""
    return pytest.mark.slow(SLOW(given(**strategies)(test.hypothesis.inner_test)))


# ----------------------------------------------------------------------- configs
SCALARS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, -1, 2**31, 2**40, 10**18]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 0.0, -0.0]),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["mingru", "lstm", "retnet", "attention", "char_lm", "parity", "lm"]),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=8), SCALARS, max_size=3),
)
KEYS = {
    section: [f.name for f in cls.__dataclass_fields__.values()]
    for section, cls in SECTIONS.items()
}


@st.composite
def raw_configs(draw) -> dict:
    raw = {}
    for section in draw(st.lists(st.sampled_from([*SECTIONS, "extra"]), unique=True, max_size=4)):
        names = st.sampled_from(KEYS.get(section, ["x"])) | st.text(min_size=1, max_size=8)
        raw[section] = draw(st.dictionaries(names, VALUES, max_size=4))
    if draw(st.booleans()):
        raw[draw(st.sampled_from(list(SECTIONS)))] = draw(SCALARS)  # a section that is no table
    return raw


def check_config(raw: dict, base: Path) -> None:
    path = base / "run.toml"
    try:
        path.write_text(tomli_w.dumps(raw))
    except (TypeError, ValueError):  # not every drawn value is representable in TOML
        return
    try:
        config = load_config(path)
    except InputError as err:
        event(f"refused: {type(err).__name__}")
        return
    event("loaded")
    model = config.model
    if model.d_model <= 64 and model.n_layers <= 2 and model.vocab_size <= 4096:
        try:
            build_model(model)
        except InputError:
            pass


@CI
@given(raw=raw_configs())
def test_random_configs_load_or_raise_config_error(raw, tmp_path):
    check_config(raw, tmp_path)


test_random_configs_many = slow_variant(
    test_random_configs_load_or_raise_config_error, raw=raw_configs()
)


@CI
@given(
    section=st.sampled_from(list(SECTIONS)),
    key_value=st.data(),
)
def test_one_bad_value_in_a_valid_config(section, key_value, tmp_path):
    """A valid config with one key set to a random value: works or ConfigError."""
    key = key_value.draw(st.sampled_from(KEYS[section]))
    value = key_value.draw(VALUES)
    raw = {"model": {"layer": "gru", "d_model": 8, "n_layers": 1}, section: {}}
    raw[section] = {**raw.get(section, {}), key: value}
    try:
        config_from_dict(raw)
    except InputError:
        pass


# ------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzz") / "run"
    text = tmp_path_factory.mktemp("text") / "text.txt"
    text.write_text("To be, or not to be, that is the question. " * 200)
    config = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    config.write_text(
        tomli_w.dumps(
            {
                "model": {"layer": "gru", "d_model": 8, "n_layers": 1, "mlp_ratio": 0.0},
                "data": {"task": "char_lm", "seq_len": 8, "path": str(text)},
                "train": {"steps": 2, "batch_size": 2, "eval_batches": 1, "warmup_steps": 1},
            }
        )
    )
    assert cli.main(["train", str(config), "--out", str(out), "--no-progress"]) == 0
    return out


FILE_NAMES = [*checkpoint.FILES, checkpoint.MANIFEST]


@st.composite
def damaged_files(draw, original: dict[str, bytes]) -> tuple[str, bytes]:
    name = draw(st.sampled_from(FILE_NAMES))
    data = original[name]
    how = draw(st.sampled_from(["random", "truncate", "flip", "torch object"]))
    if how == "random":
        return name, draw(st.binary(max_size=256))
    if how == "truncate":
        return name, data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if how == "flip":
        i = draw(st.integers(0, max(0, len(data) - 1)))
        return name, data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[
            i + 1 :
        ] if data else b"x"
    buffer = io.BytesIO()
    torch.save(
        draw(
            st.one_of(
                st.none(),
                st.dictionaries(st.text(max_size=5), SCALARS, max_size=3),
                st.lists(SCALARS, max_size=3),
            )
        ),
        buffer,
    )
    return name, buffer.getvalue()


def read_everything(path: Path) -> None:
    saved = checkpoint.read(path, quiet=True)
    saved.config()
    saved.model()
    saved.train_state()
    saved.metrics()


@CI
@given(data=st.data(), layout=st.sampled_from(["manifest", "rewritten", "flat"]))
def test_damaged_checkpoint_files_read_or_raise_checkpoint_error(saved_run, data, layout):
    """ "manifest": the bytes are damaged behind the manifest's back (its checksum catches
    it); "rewritten": the manifest is updated to match, so the damaged bytes reach the
    parsers; "flat": the layout of earlier versions, which has no manifest at all."""
    snapshot = checkpoint.latest(saved_run)
    original = {name: (snapshot / name).read_bytes() for name in FILE_NAMES}
    name, damaged = data.draw(damaged_files(original))
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        if layout == "flat":
            run.mkdir()
            for f in checkpoint.FILES:
                (run / f).write_bytes(original[f])
            if name != checkpoint.MANIFEST:
                (run / name).write_bytes(damaged)
        else:
            shutil.copytree(saved_run, run)
            target = checkpoint.latest(run)
            if layout == "rewritten" and name != checkpoint.MANIFEST:
                rewrite(target, name, damaged)
            else:
                (target / name).write_bytes(damaged)
        before = file_bytes(run)
        try:
            read_everything(run)
            event(f"{layout}: read")
        except InputError as err:
            event(f"{layout}: {type(err).__name__}")
        code = cli.main(["eval", "--checkpoint", str(run), "--val-batches", "1"])
        assert code in (0, 2)
        assert file_bytes(run) == before


test_damaged_checkpoints_many = slow_variant(
    test_damaged_checkpoint_files_read_or_raise_checkpoint_error,
    data=st.data(),
    layout=st.sampled_from(["manifest", "rewritten", "flat"]),
)


# ------------------------------------------------------------------ command lines
FLAGS = {
    "train": [
        "--out",
        "--resume",
        "--no-progress",
        "--train.lr",
        "--model.layer",
        "--data.seq_len",
        "--x",
    ],
    "eval": ["--checkpoint", "--json", "--test-lengths", "--test-batches", "--val-batches"],
    "generate": [
        "--checkpoint",
        "--prompt",
        "--max-new-tokens",
        "--temperature",
        "--top-k",
        "--top-p",
        "--seed",
        "--stream",
    ],
    "convert": ["--from", "--out", "--nonlinearity", "--batch-first"],
    "arena": [
        "--suite",
        "--layers",
        "--tasks",
        "--budget-s",
        "--steps",
        "--seeds",
        "--params",
        "--d-model",
        "--jobs",
        "--out",
    ],
    "bench": [
        "speed",
        "targets",
        "--layers",
        "--batch",
        "--seq-lens",
        "--d-model",
        "--repeats",
        "--backend",
        "--json",
    ],
    "models": ["--json"],
}
WORDS = st.one_of(
    st.sampled_from(
        [
            "nan",
            "inf",
            "-1",
            "0",
            "1",
            "3",
            "1e-45",
            "1e309",
            "",
            "auto",
            "gru",
            "quick",
            "hf",
            "torch",
            "a,b",
            "1,2",
            ",",
            "mqar",
            "run",
            "run/deeper",
            "ckpt",
            "config.toml",
            "--",
        ]
    ),
    st.text(max_size=8),
)


VALID = [
    ["eval", "--checkpoint", "ckpt"],
    ["generate", "--checkpoint", "ckpt", "--prompt", "a", "--max-new-tokens", "2"],
    ["train", "config.toml", "--out", "run"],
    ["arena", "--out", "arena", "--steps", "1"],
    ["models"],
]


@st.composite
def command_lines(draw) -> list[str]:
    """A valid command line with random additions, or a random one."""
    if draw(st.booleans()):
        argv = list(draw(st.sampled_from(VALID)))
        command = argv[0]
    else:
        command = draw(st.sampled_from([*FLAGS, "nope", "--help-me"]))
        argv = [command]
    for _ in range(draw(st.integers(0, 6))):
        argv.append(draw(st.sampled_from(FLAGS.get(command, ["--x"])) | WORDS))
        if draw(st.booleans()):
            argv.append(draw(WORDS))
    return argv


@pytest.fixture
def stubbed(monkeypatch, saved_run, tmp_path):
    """Command bodies that would run long are stubbed; a config and a checkpoint exist
    under the names the drawn command lines use."""

    def train(config, out, resume=False, progress=True):
        trainer.check_out_dir(Path(out), resume)  # the real checks, then no training
        return {"step": 0}

    def run_arena(suite, out, **kwargs):
        arena.resolve(suite, kwargs.get("layers"), kwargs.get("tasks"), kwargs.get("budget_s"))
        raise KeyboardInterrupt  # stops like Ctrl-C: nothing trained, exit 130

    monkeypatch.setattr(trainer, "train", train)
    monkeypatch.setattr(arena, "run_arena", run_arena)
    monkeypatch.setitem(cli.COMMANDS, "bench", lambda args, extra: 0)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(saved_run, tmp_path / "ckpt")
    (tmp_path / "config.toml").write_text(
        (checkpoint.latest(saved_run) / "config.toml").read_text()
    )
    return tmp_path


@CI
@given(argv=command_lines())
def test_random_command_lines_work_or_fail_in_one_line(stubbed, argv, capsys):
    ckpt_before = file_bytes(stubbed / "ckpt")
    try:
        code = cli.main(argv)
    except SystemExit as stop:  # --help and argparse's own exits
        code = stop.code
    err = capsys.readouterr().err
    event(f"{argv[0]}: exit {code}")
    assert code in (0, 2, 130), (argv, err)
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
    assert file_bytes(stubbed / "ckpt") == ckpt_before
    for path in stubbed.iterdir():  # a refused command leaves nothing new behind
        if path.name not in ("ckpt", "config.toml") and code == 2:
            assert path.is_dir() and not any(path.rglob("*.safetensors")), (argv, path)


test_random_command_lines_many = slow_variant(
    test_random_command_lines_work_or_fail_in_one_line, argv=command_lines()
)
