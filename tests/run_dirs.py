"""Test helpers for run directories (statewise.train.checkpoint's layout)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from statewise.train import checkpoint


def file_bytes(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` and its bytes, to show that a command changed nothing."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def newest(out: Path) -> Path:
    """The newest complete checkpoint directory of run directory ``out``."""
    return checkpoint.latest(out)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (newest(out) / "metrics.jsonl").read_text().splitlines()]


def rewrite(snapshot: Path, name: str, data: bytes) -> None:
    """Replace file ``name`` of a checkpoint and its manifest entry, as a writer of another
    statewise build would have written it (the checksum matches the new content)."""
    (snapshot / name).write_bytes(data)
    manifest = json.loads((snapshot / "manifest.json").read_text())
    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (snapshot / "manifest.json").write_text(json.dumps(manifest))
