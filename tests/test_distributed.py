"""torchrun: two gloo processes produce the artifacts of one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-5  # float32 arrays, elementwise relative
INDEX_RTOL = 1e-5  # float16 index, relative Frobenius norm (last-bit rounding flips allowed)
ARGS = ["-m", "influence_core", "precompute", "--dataset", "digits", "--model", "mlp",
        "--epochs", "2", "--dim", "256", "--shard-size", "256"]


def _run(cmd: list[str], home: Path) -> None:
    env = {**os.environ, "INFLUENCE_AUDIT_HOME": str(home), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_gloo_processes_match_one(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, *ARGS], one)
    shutil.copytree(one / "models", two / "models")  # the same checkpoint for both runs
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          *ARGS], two)
    (folder_one,) = (one / "index").iterdir()
    folder_two = two / "index" / folder_one.name  # same content hash
    assert '"world_size": 2' in (folder_two / "manifest.json").read_text()
    for path in folder_one.glob("*.npy"):
        a, b = np.load(path).astype(np.float64), np.load(folder_two / path.name).astype(np.float64)
        if path.stem == "index":
            assert np.linalg.norm(a - b) <= INDEX_RTOL * np.linalg.norm(a)
        else:
            np.testing.assert_allclose(b, a, rtol=RTOL, atol=RTOL * np.abs(a).max(),
                                       err_msg=path.stem)
    fa = load_file(folder_one / "factors.safetensors")
    fb = load_file(folder_two / "factors.safetensors")
    for key in fa:
        if key.endswith(("positions", "order")):
            np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)
        elif key.endswith("eigenvalues"):
            np.testing.assert_allclose(fb[key], fa[key], rtol=RTOL, atol=RTOL * fa[key].max())
