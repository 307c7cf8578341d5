"""Directories that appear whole or not at all: built in a hidden sibling, then renamed."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from statewise.errors import ArgumentError


def check_new_directory(out: str | Path, what: str) -> Path:
    """``out`` as a Path if nothing would be overwritten there (it is absent or an empty
    directory); ArgumentError naming ``what`` otherwise."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ArgumentError(
            f"{what} {str(out)!r} already exists and is not an empty directory; "
            "choose another one (nothing is overwritten)"
        )
    return out


@contextlib.contextmanager
def new_directory(out: str | Path, what: str = "--out") -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``out`` to fill; when the block ends normally it
    is renamed to ``out`` (an absent or empty directory), otherwise it is removed, so
    ``out`` holds either everything or nothing."""
    out = check_new_directory(out, what)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        check_new_directory(out, what)  # another process may have filled it meanwhile
        os.replace(tmp, out)  # an empty directory at ``out`` is replaced atomically
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
