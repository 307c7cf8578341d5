"""Shared fixtures: tiny configs and paths to ../shared/data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import statewise.kernels

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

TINY_CHAR = """
[model]
layer = "{layer}"
d_model = 16
n_layers = 1
mlp_ratio = 2.0

[data]
task = "char_lm"
seq_len = 16
path = "{path}"

[train]
steps = {steps}
batch_size = 4
warmup_steps = 5
log_every = 5
eval_every = 20
eval_batches = 2
checkpoint_every = {checkpoint_every}
"""


@pytest.fixture
def tiny_text(tmp_path: Path) -> Path:
    """A small text file: the start of tinyshakespeare when ../shared is there."""
    source = SHARED_DATA / "tinyshakespeare.txt"
    text = source.read_text()[:20_000] if source.exists() else "To be, or not to be. " * 1000
    path = tmp_path / "text.txt"
    path.write_text(text)
    return path


@pytest.fixture
def tiny_config(tmp_path: Path, tiny_text: Path):
    def write(
        layer: str = "mingru", steps: int = 30, checkpoint_every: int = 10, name: str = "tiny.toml"
    ) -> Path:
        path = tmp_path / name
        path.write_text(
            TINY_CHAR.format(
                layer=layer, path=tiny_text, steps=steps, checkpoint_every=checkpoint_every
            )
        )
        return path

    return write


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One thread, torch's and numba's, for a module of tiny models (use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``). On this 2-core machine shared
    with other work, a 2-thread parallel region waits for a time slice of the other core:
    the recogniser and tagger tests took 147 s on two threads against 17 s on one, the
    parity training test 278 s against 17 s, the fuzz tests about 3x as long."""
    numba = None
    if statewise.kernels.numba_available():
        import numba
    before = torch.get_num_threads(), numba.get_num_threads() if numba else None
    torch.set_num_threads(1)
    if numba:
        numba.set_num_threads(1)
    yield
    torch.set_num_threads(before[0])
    if numba:
        numba.set_num_threads(before[1])
