"""Run directories: checkpoints written by one writer, read by anyone without a change.

A run directory ``DIR`` (``statewise train --out DIR``) holds (docs/checkpoints.md)::

    DIR/checkpoints/step-00000200/   one complete checkpoint, self-contained:
        config.toml                    the RunConfig the model was built from
        model.safetensors              the weights
        train_state.pt                 step, optimizer and RNG state (weights_only=True)
        metrics.jsonl                  one JSON object per logged step, up to this step
        manifest.json                  written last: format, step, and each file's size
                                       and SHA-256
    DIR/checkpoints/step-00000100/   the one before (the writer keeps the last K)
    DIR/tensorboard/                 TensorBoard event files ([log] tensorboard = true)
    DIR.lock                         beside DIR, while a writer runs (``train.lock``)

A save writes a hidden ``checkpoints/.step-N.tmp-PID`` directory, fsyncs its files,
writes the manifest and renames the directory into place, so a checkpoint directory with
a manifest is complete. Readers take the newest checkpoint whose files match their
manifest and fall back to the one before, with a warning, when the newest is incomplete
or corrupt; they never write, rename or delete anything. Only the writer, holding the
lock, removes what a killed save of its own left behind.

A directory written before this layout (the four files directly in ``DIR``) is still
read; a run continued from it saves into ``DIR/checkpoints/`` beside the old files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from statewise.errors import CheckpointError, ConfigError
from statewise.models import build_model
from statewise.train.config import RunConfig, parse_config

FILES = ("config.toml", "model.safetensors", "train_state.pt", "metrics.jsonl")
MANIFEST = "manifest.json"
FORMAT = 2  # the layout above; 1 is the flat directory of FILES
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"  # DIR/tensorboard/: event files of [log] tensorboard = true
_NAME = re.compile(r"step-(\d{8,})")
_LEFTOVER = re.compile(r"\.step-\d{8,}\.(tmp|replaced)-\d+")


class CheckpointWarning(UserWarning):
    """A checkpoint that was skipped (incomplete or corrupt) in favour of an older one."""


def snapshot_name(step: int) -> str:
    return f"step-{step:08d}"


# ------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Checkpoint:
    """One complete checkpoint, read into memory: ``files`` maps each file name to its
    bytes, checked against the manifest. Holding the bytes keeps a reader consistent when
    the writer prunes the directory right after it was read."""

    path: Path
    files: dict[str, bytes]

    @property
    def step(self) -> int:
        return self.train_state()["step"]

    def config(self) -> RunConfig:
        try:
            return parse_config(self.files["config.toml"], str(self.path / "config.toml"))
        except ConfigError as err:
            raise CheckpointError(f"{self.path}: its config.toml is not usable: {err}") from None

    def model(self) -> nn.Module:
        """The model of this checkpoint, in eval mode."""
        model = build_model(self.config().model)
        self.load_weights(model)
        return model.eval()

    def load_weights(self, model: nn.Module) -> None:
        try:
            tensors = safetensors.torch.load(self.files["model.safetensors"])
        except Exception as err:  # safetensors raises several kinds for bad bytes
            raise CheckpointError(
                f"{self.path}: model.safetensors cannot be read: {_first_line(err)}"
            ) from None
        expected = model.state_dict()
        missing = [n for n in expected if n not in tensors and not _tied(n, expected, tensors)]
        unexpected = [n for n in tensors if n not in expected]
        wrong = [n for n in tensors if n in expected and tensors[n].shape != expected[n].shape]
        if missing or unexpected or wrong:
            names = ", ".join((missing + unexpected + wrong)[:4])
            raise CheckpointError(
                f"{self.path}: model.safetensors does not fit the model in config.toml "
                f"(a checkpoint of another layer type or size?); mismatched tensors: {names}"
            )
        model.load_state_dict(tensors, strict=False)

    def train_state(self) -> dict[str, Any]:
        """train_state.pt: a dict with at least an int ``step``; CheckpointError otherwise."""
        try:
            state = torch.load(io.BytesIO(self.files["train_state.pt"]), weights_only=True)
        except Exception as err:  # torch and pickle raise many kinds for a corrupt file
            raise CheckpointError(
                f"{self.path}: train_state.pt cannot be read: {_first_line(err)}"
            ) from None
        step = state.get("step") if isinstance(state, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise CheckpointError(f"{self.path}: train_state.pt holds no step number")
        return state

    def metrics(self) -> list[dict[str, Any]]:
        try:
            lines = self.files["metrics.jsonl"].decode("utf-8").splitlines()
            records = [json.loads(line) for line in lines if line.strip()]
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise CheckpointError(f"{self.path}: metrics.jsonl cannot be read: {err}") from None
        if not all(isinstance(r, dict) for r in records):
            raise CheckpointError(f"{self.path}: metrics.jsonl holds a line that is not an object")
        return records


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _tied(name: str, expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> bool:
    """Whether ``name`` shares its storage with a tensor that is in ``tensors`` (a tied
    embedding, which safetensors stores once)."""
    ptr = expected[name].data_ptr()
    return any(expected[n].data_ptr() == ptr for n in tensors if n in expected)


def _read_snapshot(snapshot: Path) -> Checkpoint:
    """Read and check one checkpoint directory; CheckpointError saying why it is
    incomplete or corrupt, FileNotFoundError if it vanished while being read."""
    try:
        manifest = json.loads((snapshot / MANIFEST).read_bytes())
        expected = {n: (int(f["bytes"]), str(f["sha256"])) for n, f in manifest["files"].items()}
    except FileNotFoundError:
        if not snapshot.exists():
            raise
        raise CheckpointError(f"{snapshot}: no {MANIFEST} (a save that did not finish)") from None
    except NotADirectoryError:
        raise CheckpointError(f"{snapshot} is a file, not a checkpoint directory") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{snapshot}: {MANIFEST} cannot be read ({err})") from None
    missing = [name for name in FILES if name not in expected]
    if missing:
        raise CheckpointError(f"{snapshot}: {MANIFEST} does not list {', '.join(missing)}")
    files = {}
    for name, (size, digest) in expected.items():
        if "/" in name or name.startswith("."):
            raise CheckpointError(f"{snapshot}: {MANIFEST} names a file {name!r}")
        try:
            data = (snapshot / name).read_bytes()
        except FileNotFoundError:
            if not snapshot.exists():
                raise
            raise CheckpointError(f"{snapshot}: {name} is missing") from None
        if len(data) != size:
            raise CheckpointError(
                f"{snapshot}: {name} has {len(data)} bytes, its manifest says {size}"
            )
        if hashlib.sha256(data).hexdigest() != digest:
            raise CheckpointError(f"{snapshot}: {name} does not match its checksum")
        files[name] = data
    return Checkpoint(snapshot, files)


def verify(snapshot: str | Path) -> None:
    """CheckpointError saying why ``snapshot`` (one checkpoint directory) is incomplete
    or corrupt; returns if every file matches its manifest."""
    try:
        _read_snapshot(Path(snapshot))
    except FileNotFoundError:
        raise CheckpointError(f"{snapshot} does not exist") from None


def _snapshots(path: Path) -> list[tuple[int, Path]]:
    """(step, directory) of the checkpoint directories under ``path``, newest first."""
    root = path / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), d) for d in root.iterdir() if (m := _NAME.fullmatch(d.name))]
    return sorted(found, reverse=True)


def _read_flat(path: Path) -> Checkpoint:
    return Checkpoint(path, {name: (path / name).read_bytes() for name in FILES})


READ_ATTEMPTS = 5  # a checkpoint pruned while being read: list the directory again


def read(path: str | Path, quiet: bool = False) -> Checkpoint:
    """The newest complete checkpoint of run directory ``path`` (or of ``path`` itself when
    it is one checkpoint), read into memory. A newer checkpoint that is incomplete or
    corrupt is skipped with a CheckpointWarning (none with ``quiet``). Reads only."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist")
    if (path / MANIFEST).is_file():
        try:
            return _read_snapshot(path)
        except FileNotFoundError:
            raise CheckpointError(f"{path} was removed while it was read") from None
    for _ in range(READ_ATTEMPTS):
        skipped: list[str] = []
        for _, snapshot in _snapshots(path):
            try:
                found = _read_snapshot(snapshot)
            except CheckpointError as err:
                skipped.append(str(err))
                continue
            except FileNotFoundError:  # pruned by the writer meanwhile: a newer one exists
                break
            if skipped and not quiet:
                warnings.warn(
                    f"skipped {len(skipped)} newer checkpoint(s) that cannot be read "
                    f"({'; '.join(skipped)}); reading {snapshot}",
                    CheckpointWarning,
                    stacklevel=2,
                )
            return found
        else:
            break
    if all((path / name).is_file() for name in FILES):
        return _read_flat(path)
    if skipped:
        raise CheckpointError(f"{path} holds no complete checkpoint: {'; '.join(skipped)}")
    raise CheckpointError(
        f"{str(path)!r} is not a statewise checkpoint (no {CHECKPOINTS}/step-* directory "
        f"and not the files {', '.join(FILES)})"
    )


def latest(path: str | Path, quiet: bool = False) -> Path:
    """The directory of the newest complete checkpoint of ``path`` (see ``read``)."""
    return read(path, quiet).path


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` holds at least one complete checkpoint. Reads only."""
    try:
        read(path, quiet=True)
    except CheckpointError:
        return False
    return True


def load_run_config(path: str | Path) -> RunConfig:
    return read(path).config()


def load(path: str | Path) -> nn.Module:
    """The model stored in checkpoint directory ``path`` (its newest complete checkpoint),
    in eval mode."""
    return read(path).model()


def load_weights(model: nn.Module, path: str | Path) -> None:
    read(path).load_weights(model)


def load_train_state(path: str | Path) -> dict[str, Any]:
    return read(path).train_state()


def load_metrics(path: str | Path) -> list[dict[str, Any]]:
    return read(path).metrics()


# ------------------------------------------------------------------------- writing
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(
    path: str | Path,
    config: RunConfig,
    model: nn.Module,
    train_state: dict[str, Any],
    metrics: list[dict[str, Any]],
    keep: int = 2,
) -> Path:
    """Write a checkpoint of step ``train_state["step"]`` into run directory ``path`` and
    keep the newest ``keep`` checkpoints; returns the new checkpoint's directory. The
    caller is the run's one writer (it holds ``train.lock.writer_lock(path)``)."""
    path = Path(path)
    step = int(train_state.get("step", 0))
    root = path / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / snapshot_name(step)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    (tmp / "config.toml").write_text(config.to_toml(), encoding="utf-8")
    safetensors.torch.save_model(
        model, str(tmp / "model.safetensors"), metadata={"step": str(step)}
    )
    torch.save(train_state, tmp / "train_state.pt")
    with open(tmp / "metrics.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(m) + "\n" for m in metrics)
    files = {}
    for name in FILES:
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
        data = (tmp / name).read_bytes()
        files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
        json.dump({"format": FORMAT, "step": step, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists():  # a checkpoint of this step that failed to verify: replaced
        replaced = root / f".{final.name}.replaced-{os.getpid()}"
        final.rename(replaced)
        tmp.rename(final)
        shutil.rmtree(replaced)
    else:
        tmp.rename(final)
    _fsync_dir(root)
    for _, old in _snapshots(path)[max(1, keep) :]:
        shutil.rmtree(old)
    return final


def clean_leftovers(path: str | Path) -> list[Path]:
    """Remove what killed saves left in ``path``'s checkpoints folder (only directories
    named as ``save`` names them); the writer calls this, holding the lock."""
    root = Path(path) / CHECKPOINTS
    if not root.is_dir():
        return []
    removed = [d for d in root.iterdir() if _LEFTOVER.fullmatch(d.name) and d.is_dir()]
    for d in removed:
        shutil.rmtree(d)
    return removed


def set_aside_unreadable(path: str | Path, resumed_from: Path) -> list[Path]:
    """Rename checkpoints newer than ``resumed_from`` (they failed to verify) to
    ``unreadable-step-N``, kept for inspection and no longer read; the writer calls this
    when it resumes from an older checkpoint."""
    moved = []
    for _, snapshot in _snapshots(Path(path)):
        if snapshot == resumed_from:
            break
        target = snapshot.with_name(f"unreadable-{snapshot.name}")
        if not target.exists():
            snapshot.rename(target)
            moved.append(target)
    return moved


def holds_other_files(path: str | Path) -> list[str]:
    """Names in run directory ``path`` that a writer did not make (FILES of the flat
    layout count as its own)."""
    own = {CHECKPOINTS, TENSORBOARD, "tokenizer", *FILES}  # tokenizer/: the run's tokenizer
    return sorted(p.name for p in Path(path).iterdir() if p.name not in own)
