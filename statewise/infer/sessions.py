"""Named sessions: a conversation's state kept on disk between requests, so that it
continues where it stopped without reading its history again, and survives a restart.

Each session is one safetensors file ``DIR/<name>.safetensors`` written by
statewise.infer.state_io (atomically; with the model's fingerprint, checked on load, so a
session of another model is refused rather than misread).
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import nn

from statewise.errors import ArgumentError
from statewise.infer.state_io import load_state_file, model_fingerprint, save_state_file
from statewise.ops.tree import State

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class SessionStore:
    """The sessions of one model in directory ``root`` (created when first written)."""

    def __init__(self, root: str | Path, model: nn.Module) -> None:
        if not str(root).strip():  # Path("") is the working directory: never meant
            raise ArgumentError("the session directory is empty: name a directory")
        if Path(root).exists() and not Path(root).is_dir():
            raise ArgumentError(f"the session directory {str(root)!r} is a file")
        self.root, self.model = Path(root), model
        self.fingerprint = model_fingerprint(model)

    def path(self, name: str) -> Path:
        """The file of session ``name``; a name that is not 1-128 letters, digits, '.', '_'
        or '-' (starting with a letter or digit) is an ArgumentError, so no name reaches
        outside the directory."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ArgumentError(
                f"a session name is 1-128 letters, digits, '.', '_' or '-', got {name!r}"
            )
        return self.root / f"{name}.safetensors"

    def load(self, name: str) -> tuple[State, int] | None:
        """Session ``name``'s state (batch 1) and the tokens it has read; None if new."""
        path = self.path(name)
        if not path.exists():
            return None
        state, meta = load_state_file(path, self.model, fingerprint=self.fingerprint)
        return state, meta.tokens or 0

    def save(self, name: str, state: State, tokens: int) -> None:
        """Keep ``state`` (batch 1, having read ``tokens`` tokens) as session ``name``."""
        path = self.path(name)
        self.root.mkdir(parents=True, exist_ok=True)
        save_state_file(path, state, self.model, tokens=tokens, fingerprint=self.fingerprint)
