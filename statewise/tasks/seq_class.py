"""Sequential classification on data shipped inside a wheel: scikit-learn's handwritten
digits (the UCI "optical recognition of handwritten digits" test set, 1797 images of 8 x 8
pixels with values 0-16, labels 0-9), read as a sequence.

The file ``sklearn/datasets/data/digits.csv.gz`` is read straight from the installed
package (no network, and scikit-learn itself is not imported). scikit-learn is an optional
dependency: without it, ``digits`` raises an ImportError naming ``pip install
scikit-learn``.

Orders:
    "pixel"  the 64 pixels row-major as 64 tokens; token = value + 1 (1 .. 17: the native
             17 grey levels), token 0 is left for padding, so the vocabulary is 18
             (``PIXEL_VOCAB``). This is the "sequential MNIST" setting at 8 x 8.
    "row"    the 8 rows as 8 steps of 8 real values in [0, 1] (value / 16), float32
             (N, 8, 8), for ``SequenceClassifier`` with real-valued input.

Split: a permutation of the 1797 rows drawn from ``numpy.random.default_rng(seed)``; the
first ``round(test_fraction * N)`` rows are the test split, the next
``round(val_fraction * N)`` validation, the rest training (``split_indices``).

    data = digits(seed=0)                     # {"train", "val", "test"}: LabelledSplit
    data["train"].x.shape                     # (1259, 64) int64 tokens 1..17
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np

from statewise.errors import DataError
from statewise.tasks.labelled import LabelledSplit
from statewise.tasks.packaged import package_file

SIDE = 8
N_LEVELS = 17  # pixel values 0 .. 16
PIXEL_VOCAB = N_LEVELS + 1  # tokens 1 .. 17 and padding 0
N_CLASSES = 10
ORDERS = ("pixel", "row")


def load_digits_array() -> tuple[np.ndarray, np.ndarray]:
    """The raw digits: pixels (1797, 64) int64 in 0..16 and labels (1797,) int64 (copies:
    the file is parsed once per process)."""
    table = _digits_table(package_file("sklearn", "datasets/data/digits.csv.gz", "scikit-learn"))
    return table[:, :-1].copy(), table[:, -1].copy()


@functools.cache
def _digits_table(path: Path) -> np.ndarray:
    with gzip.open(path, "rt") as f:
        return np.loadtxt(f, delimiter=",", dtype=np.int64)


def split_indices(
    n: int, seed: int, val_fraction: float, test_fraction: float
) -> dict[str, np.ndarray]:
    """Disjoint row indices covering range(n): test first, then val, then train, from one
    permutation drawn with ``numpy.random.default_rng(seed)``."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(
            "val_fraction and test_fraction must be in [0, 1) with a sum below 1, got "
            f"{val_fraction} and {test_fraction}"
        )
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = round(test_fraction * n), round(val_fraction * n)
    return {
        "train": order[n_test + n_val :],
        "val": order[n_test : n_test + n_val],
        "test": order[:n_test],
    }


def digits(
    seed: int = 0,
    *,
    order: str = "pixel",
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> dict[str, LabelledSplit]:
    """The digits as train / val / test ``LabelledSplit`` s in ``order`` (see module doc)."""
    if order not in ORDERS:
        raise DataError(f"order must be one of {ORDERS}, got {order!r}")
    pixels, labels = load_digits_array()
    if order == "pixel":
        x = pixels + 1
    else:
        x = (pixels / (N_LEVELS - 1)).astype(np.float32).reshape(-1, SIDE, SIDE)
    out = {}
    for name, rows in split_indices(len(labels), seed, val_fraction, test_fraction).items():
        out[name] = LabelledSplit(
            x=x[rows], y=labels[rows], lengths=np.full(len(rows), x.shape[1], dtype=np.int64)
        )
    return out
