"""Shared fixtures: tiny configs and paths to ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

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
