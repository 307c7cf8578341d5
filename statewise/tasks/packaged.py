"""Data files that installed wheels ship (scikit-learn's digits, statsmodels' co2): located
without importing the package, with an error naming the pip package when it is missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_file(package: str, relative: str, pip_name: str) -> Path:
    """The file ``relative`` inside installed ``package`` (pip name ``pip_name``)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"this dataset is read from the {pip_name} package, which is not installed: "
            f"pip install {pip_name}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {pip_name} package")
    return path
