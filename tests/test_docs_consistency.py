"""The facts the README and docs/ state about the code, checked against the code.

Each expected statement is derived from the code (the registry, the layers, the kernel
dispatch, the optimiser) wherever possible, so a change on either side shows up here.
"""

from __future__ import annotations

import inspect
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from statewise import kernels, layers
from statewise.train.config import TrainConfig
from statewise.train.optim import make_optimizer

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
ARENA = (ROOT / "docs" / "arena.md").read_text(encoding="utf-8")
ATTENTION_DOC = (ROOT / "docs" / "models" / "attention.md").read_text(encoding="utf-8")
S4D_DOC = (ROOT / "docs" / "models" / "s4d.md").read_text(encoding="utf-8")
PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Widths at which every README formula is exact (rwkv's needs d < 64 or 64 | d).
WIDTHS = (16, 64, 128, 256)


def prose(markdown: str) -> str:
    """The text outside fenced code blocks, with line breaks as spaces."""
    return " ".join(re.sub(r"```.*?```", " ", markdown, flags=re.S).split())


def sentences(text: str) -> list[str]:
    return re.split(r"(?<=[.;])\s+(?=[A-Z`(])", prose(text))


def fenced_blocks(markdown: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", markdown, flags=re.S)


# ------------------------------------------------------------------ install line


def readme_pin() -> str:
    """The torch version the README's two install commands pin (the same in both)."""
    commands = fenced_blocks(README, "bash")[0].strip().splitlines()
    assert len(commands) == 2, commands
    pins = {re.search(r"torch==([\w.]+)", c).group(1) for c in commands}
    assert len(pins) == 1, pins
    return pins.pop()


def test_readme_pin_is_the_installed_torch():
    assert torch.__version__.split("+")[0] == readme_pin()


def test_readme_shows_the_cpu_wheel_index_for_the_pinned_version():
    pin = re.escape(readme_pin())
    lines = [b for block in fenced_blocks(README, "bash") for b in block.splitlines()]
    cpu = [
        line
        for line in lines
        if re.search(rf"pip install torch=={pin} --index-url {CPU_INDEX}$", line)
    ]
    assert cpu, "no install line for torch from PyTorch's CPU wheel index"
    # The line is not run here: the README must say so.
    assert re.search(r"cannot be reached from [^.]*not tested here", prose(README))


def test_readme_does_not_claim_the_pin_avoids_cuda():
    text = prose(README)
    assert not re.search(r"CPU build[^.]*pinned|pinned[^.]*CPU build", text)
    assert not re.search(r"never (pulls|installs|downloads)[^.]*CUDA", text)
    about_pin = [s for s in sentences(README) if "CUDA" in s and "torch==" in s]
    assert about_pin, "the README should say what the pin gives on the public index"
    for sentence in about_pin:
        assert f"`torch=={readme_pin()}` is the CUDA build" in sentence, sentence


def test_pyproject_torch_comment_does_not_claim_the_pin_avoids_cuda():
    lines = PYPROJECT.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith('"torch'))
    comment = []
    for line in reversed(lines[:at]):
        if not line.strip().startswith("#"):
            break
        comment.insert(0, line.strip().lstrip("# "))
    comment_text = " ".join(comment)
    assert not re.search(r"would let pip pull[^.]*CUDA", comment_text), comment_text
    if "CUDA" in comment_text:
        assert "is the CUDA build" in comment_text, comment_text


# ----------------------------------------------------------------- the backend


def test_readme_auto_backend_is_what_the_code_resolves(monkeypatch):
    monkeypatch.setenv("STATEWISE_BACKEND", "auto")
    resolved = kernels.current()
    assert resolved == kernels.available()[-1]
    match = re.search(
        r"`STATEWISE_BACKEND=auto` \(the default\) is `(\w+)` whenever numba imports[^.]*"
        r"and `(\w+)` only without it",
        prose(README),
    )
    assert match, "the README should say which backend auto resolves to"
    with_numba, without = match.groups()
    assert without == "torch"
    if kernels.numba_available():
        assert with_numba == resolved
    for doc in [README, *(p.read_text() for p in (ROOT / "docs").glob("*.md"))]:
        for sentence in sentences(doc):
            if "STATEWISE_BACKEND=auto" in sentence:
                assert "faster" not in sentence, sentence


# ----------------------------------------------------------------- state sizes


def readme_models_table() -> dict[str, list[str]]:
    """name -> [family, modes, state size, paper] from the README's Models table."""
    section = README.split("## Models", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"`\w+`", cells[0]):
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def as_python(formula: str) -> str:
    """A README formula ("2d + d·min(d, 64)", "d²/8 + d/2 + 4") as a Python expression."""
    expr = formula.split(" (", 1)[0].replace("²", "**2").replace("·", "*").replace("−", "-")
    return re.sub(r"(\d)(d)", r"\1*\2", expr)


def evaluate(expr: str, d: int) -> float:
    try:
        code = compile(expr, "<formula>", "eval")
    except SyntaxError:
        pytest.fail(f"not a formula in d: {expr!r}")
    return eval(code, {"__builtins__": {}, "min": min, "max": max}, {"d": d})


@pytest.fixture
def shapes_only(monkeypatch):
    """Skip the QR of orthogonal inits (rwkv's take seconds): a state's size depends on
    the layer's shapes, not on its weights' values."""
    monkeypatch.setattr(torch.nn.init, "orthogonal_", lambda tensor, gain=1.0: tensor)


def test_readme_table_lists_every_registered_layer_with_its_modes():
    table = readme_models_table()
    assert sorted(table) == layers.names()
    for name, (_, modes, _, _) in table.items():
        assert tuple(m.strip() for m in modes.split(",")) == layers.info(name).modes, name


@pytest.mark.parametrize("name", layers.names())
def test_state_size_formulas_agree(name, shapes_only):
    """README formula == registry formula (`statewise models`) == the built layer's."""
    readme = as_python(readme_models_table()[name][2])
    registry = layers.info(name).state_size
    for d in WIDTHS:
        measured = layers.get(name, d_model=d).state_size
        assert evaluate(registry, d) == measured, (name, d, registry, measured)
        assert evaluate(readme, d) == measured, (name, d, readme, measured)


def test_rwkv_formula_holds_where_the_readme_says(shapes_only):
    cell = readme_models_table()["rwkv"][2]
    assert "(d < 64 or 64 divides d)" in cell
    for d in (8, 24, 48, 192, 320):
        assert d < 64 or d % 64 == 0
        assert evaluate(as_python(cell), d) == layers.get("rwkv", d_model=d).state_size, d


# ------------------------------------------------------- attention's KV cache


def test_attention_state_is_a_fixed_capacity_cache():
    max_len = inspect.signature(layers.info("attention").cls).parameters["max_len"].default
    cell = readme_models_table()["attention"][2]
    stated = re.search(r"fixed capacity, max_len = (\d+) tokens", cell)
    assert stated and int(stated.group(1)) == max_len, cell
    d = 16
    assert layers.get("attention", d_model=d).state_size == 2 * max_len * d

    layer = layers.get("attention", d_model=8, n_heads=2, max_len=6)
    state = layer.init_state(1)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for _ in range(4):
        _, state = layer.step(torch.randn(1, 8), state)
    assert {k: tuple(v.shape) for k, v in state.items()} == shapes

    for doc in (README, ATTENTION_DOC, ARENA):
        for sentence in sentences(doc):
            if re.search(r"\b(cache|state)\b", sentence) and re.search(r"\bgrows\b", sentence):
                assert "attention" not in sentence.lower(), sentence


# --------------------------------------------------------- tied embeddings


def test_arena_states_each_layers_embedding_tying():
    untied = sorted(n for n in layers.names() if not layers.info(n).cls.tie_embeddings)
    item = prose(ARENA).split("Every model is the same stack", 1)[1].split("3. trains", 1)[0]
    if untied:
        assert "(tied with the output)" not in item
        match = re.search(r"tied with the output for every layer but ([\w, ]+?), whose", item)
        assert match, item
        assert sorted(re.split(r",\s*|\s+and\s+", match.group(1))) == untied
        for name in untied:
            std = layers.info(name).cls.embed_std
            assert f"N(0, {std:g}) embedding is untied" in item, (name, item)
    for sentence in sentences(ARENA):
        assert not re.search(r"every (model's )?embedding is tied", sentence, re.I), sentence


# --------------------------------------------------------- s4d's weight decay


def test_s4d_doc_states_which_parameters_skip_weight_decay(monkeypatch):
    # The parameter groups make_optimizer builds, without constructing AdamW (its first
    # construction imports torch._dynamo, about 2 s).
    monkeypatch.setattr(torch.optim, "AdamW", lambda groups, **kw: SimpleNamespace(groups=groups))
    layer = layers.get("s4d", d_model=8)
    groups = make_optimizer(layer, TrainConfig()).groups
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    # Matrices (rank >= 2) the optimiser keeps out of weight decay because of the tag.
    skipped = sorted(
        n
        for n, p in layer.named_parameters()
        if p.dim() >= 2 and id(p) in no_decay and getattr(p, "_optim", None)
    )
    assert skipped, "the optimiser does not honour the _optim tag"
    text = prose(S4D_DOC)
    assert not re.search(r"(does not|doesn't|do not) read the tag|ignores the tag", text)
    stated = re.search(r"tag, so ((?:`\w+`(?:, | and )?)+) train without weight decay", text)
    assert stated, "docs/models/s4d.md should say which parameters skip weight decay"
    assert sorted(re.findall(r"`(\w+)`", stated.group(1))) == skipped


# ------------------------------------------------------ documented commands


def documented_commands() -> list[tuple[str, list[str]]]:
    """Every ``statewise ...`` line of the README's and docs/'s fenced blocks, as argv.

    The synopses' notation is read as a user would type it: ``[--flag X]`` is the flag
    given, ``a|b`` the first choice, a ``NAME=value`` line of the block fills ``$NAME``,
    and a column after two spaces that starts with a lower-case word is a description.
    Lines whose sub-command ends with ``:`` are printed output, not commands."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(encoding="utf-8"), re.S):
            block = block.replace("\\\n", " ")
            for name, quoted, bare in re.findall(
                r'^([A-Z][A-Z0-9_]*)=(?:"([^"]*)"|(\S*))', block, re.M
            ):
                block = block.replace(f"${name}", quoted or bare)
            for line in block.splitlines():
                for part in re.split(r"&&|;| \| ", line):
                    match = re.match(r"\s*(?:\S*/)?statewise\s+(?![\w/]*\.py)(.*)", part)
                    if not match or re.match(r"[\w ]+:", match.group(1)):
                        continue
                    text = re.split(r"\s{2,}(?=[a-z])", match.group(1))[0]
                    text = re.sub(r"(\S+?)\|\S+", r"\1", text.replace("[", " ").replace("]", " "))
                    argv = shlex.split(text, comments=True)
                    found.append((f"{path.relative_to(ROOT)}: {part.strip()}", argv))
    return found


def test_documented_commands_parse():
    """Each command the docs show names a sub-command and flags the CLI has (a renamed
    or removed flag fails here). A metavar in place of a typed value (``--vocab-size
    N``) is accepted."""
    from statewise.cli import UsageError, build_parser

    commands = documented_commands()
    assert len(commands) > 50  # the README's synopsis, the benchmark and serving commands
    wrong = []
    for where, argv in commands:
        try:
            args, extra = build_parser().parse_known_args(argv)
            if extra and args.command != "train":  # train alone takes --section.key=value
                wrong.append(f"{where}: unrecognised {extra}")
        except UsageError as err:
            if not re.search(r"invalid \w+ value: '[A-Z][A-Z0-9_,]*'", str(err)):
                wrong.append(f"{where}: {err}")
    assert not wrong, "\n".join(wrong)
