"""numba's thread pool follows OMP_NUM_THREADS unless NUMBA_NUM_THREADS is set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("numba", reason="the numba backend is not installed")

PROBE = "import statewise.kernels.scan, numba; print(numba.config.NUMBA_NUM_THREADS)"


def _pool_size(**env: str) -> int:
    clean = {
        k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to tell the sizes apart")
def test_omp_num_threads_sizes_the_numba_pool():
    assert _pool_size(OMP_NUM_THREADS="1") == 1
    assert _pool_size(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="2") == 2  # the user's choice wins
    assert _pool_size() == os.cpu_count()  # neither set: numba's default, every core


def test_numba_imported_first_keeps_its_pool_and_compiles(tmp_path):
    # numba read its config at import; setting NUMBA_NUM_THREADS after that made the next
    # compile (an empty cache: NUMBA_CACHE_DIR) fail with "Cannot set NUMBA_NUM_THREADS"
    probe = (
        "import numba, torch, statewise.kernels\n"
        "from statewise.ops.selective_scan import selective_scan\n"
        "x = torch.rand(2, 9, 4)\n"
        "with statewise.kernels.use('numba'):\n"
        "    selective_scan(x, x, -torch.rand(4, 3), x[..., :3], x[..., :3])\n"
        "print(numba.config.NUMBA_NUM_THREADS)"
    )
    clean = {
        k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")
    }
    env = {**clean, "OMP_NUM_THREADS": "1", "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == os.cpu_count()  # numba's own default, left alone


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to tell the counts apart")
def test_a_numba_kernel_leaves_torch_threads_as_they_were():
    """numba's OpenMP layer shares the runtime with torch: restoring numba's pool size after
    a kernel set torch's thread count to it too (a 1-thread arena cell then trained on 2)."""
    probe = (
        "import torch, statewise.layers as L\n"
        "torch.set_num_threads(1)\n"
        "L.get('mingru', d_model=64)(torch.randn(4, 512, 64))\n"  # the scan kernel
        "a = torch.get_num_threads()\n"
        "y, _ = L.get('slstm', d_model=64)(torch.randn(4, 64, 64, requires_grad=True))\n"
        "y.sum().backward()\n"  # the fused cell kernel, forward and backward
        "print(a, torch.get_num_threads())\n"
    )
    clean = {
        k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")
    }
    env = {**clean, "STATEWISE_BACKEND": "numba"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]
