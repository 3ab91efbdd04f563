"""Shared fixtures. Keep them small and generic; tests build their own problems from these."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def _denormals_restored() -> None:
    """main() (and tune_runtime) flush denormal floats to zero for the whole process; undo it
    after each test, so a later test (hypothesis's float strategies refuse to run under it)
    sees the default."""
    yield
    import torch

    torch.set_flush_denormal(False)


# ---- data, artifacts, network, images ------------------------------------------------------


def _shared_data() -> Path | None:
    env = os.environ.get("INFLUENCE_AUDIT_DATA")
    for root in ([Path(env)] if env else []) + [
        Path(__file__).resolve().parents[2] / "shared" / "data"
    ]:
        if (root / "MNIST" / "raw").is_dir() and (root / "FashionMNIST" / "raw").is_dir():
            return root
    return None


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder holding MNIST/ and FashionMNIST/ in torchvision's layout: $INFLUENCE_AUDIT_DATA,
    else ../shared/data beside the repository. Skips the test when neither has them."""
    root = _shared_data()
    if root is None:
        pytest.skip("MNIST/Fashion-MNIST not found: set INFLUENCE_AUDIT_DATA or add ../shared/data")
    return root


@pytest.fixture(scope="module")
def pair_noise_digits(tmp_path_factory: pytest.TempPathFactory):
    """digits/mlp with 10% pair noise (ten epochs), trained once per test module in its own
    $INFLUENCE_AUDIT_HOME."""
    from influence_core import load_problem, recipe

    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INFLUENCE_AUDIT_HOME", str(home))
        yield load_problem(recipe("digits", "mlp", noise=0.1, noise_kind="pair", epochs=10))


@pytest.fixture
def artifacts_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$INFLUENCE_AUDIT_HOME pointed at a fresh folder, so checkpoints never touch the repo."""
    home = tmp_path / "artifacts"
    monkeypatch.setenv("INFLUENCE_AUDIT_HOME", str(home))
    return home


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network (DNS and connect fail at once) and an empty torch hub cache: downloads fail
    fast and pretrained weights are never found."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """write_image(path, size=(w, h), mode="RGB", seed=0): a random-noise image file whose format
    follows the suffix (.jpg, .png, ...). Creates parent folders; returns the path."""

    def write(path: Path, size: tuple[int, int] = (16, 12), mode: str = "RGB",
              seed: int = 0) -> Path:
        rng = np.random.default_rng(seed)
        shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).convert(mode).save(path)
        return path

    return write
