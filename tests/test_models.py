"""Models build for grey and colour inputs, and checkpoints load only when they are plain weights
of the same architecture."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from influence_core import MODELS, CheckpointError, build_model, load_checkpoint

SHAPES = [(1, 28, 28), (3, 32, 32)]
TORCHVISION = ["resnet18", "resnet50"]  # vit_b_16 has its own, lighter test


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_small_models_forward(name: str, shape: tuple[int, int, int]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pretrained weights involved, so no warning
        model = build_model(name, shape, 7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_cnn_is_the_papers_architecture() -> None:
    linears = [m for m in build_model("cnn", (1, 28, 28), 10) if isinstance(m, nn.Linear)]
    convs = [m for m in build_model("cnn", (1, 28, 28), 10) if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 32, (3, 3)), (32, 64, (3, 3))]
    assert [tuple(m.weight.shape) for m in linears] == [(128, 1600), (10, 128)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_models_fall_back_to_random_init_offline(
    name: str, shape: tuple[int, int, int], offline: None
) -> None:
    with pytest.warns(UserWarning, match=rf"{name}: pretrained ImageNet weights could not be "
                      r"loaded .*RANDOM initialisation.*copy https://.*\.pth to .*torch_home"):
        model = build_model(name, shape, 5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_vit_b_16_builds_and_runs_offline(offline: None) -> None:
    with pytest.warns(UserWarning, match="vit_b_16: pretrained ImageNet weights"):
        model = build_model("vit_b_16", (1, 28, 28), 3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 28, 28))
    assert out.shape == (1, 3) and torch.isfinite(out).all()


def test_unknown_model_and_channels_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="1- or 3-channel"):
        build_model("resnet18", (4, 32, 32), 10)
    assert set(MODELS) >= {"mlp", "cnn", "resnet18", "resnet50", "vit_b_16"}


# ---- checkpoints --------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    saved = build_model("cnn", (1, 28, 28), 10)
    torch.save(saved.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": saved.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    for name in ("plain.pt", "wrapped.pt"):
        loaded = load_checkpoint(build_model("cnn", (1, 28, 28), 10), tmp_path / name)
        for a, b in zip(saved.state_dict().values(), loaded.state_dict().values()):
            assert torch.equal(a, b)


def test_checkpoint_of_another_architecture_names_keys(tmp_path: Path) -> None:
    path = tmp_path / "cnn.pt"
    torch.save(build_model("cnn", (1, 28, 28), 10).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(build_model("mlp", (1, 28, 28), 10), path)
    msg = str(info.value)
    assert str(path) in msg
    assert "missing keys: 1.bias, 1.weight, 5.bias, 5.weight." in msg  # mlp's linears
    assert "unexpected keys: 0.bias, 0.weight, 7.bias, 7.weight, 9.bias, 9.weight." in msg
    assert "3.weight: checkpoint (64, 32, 3, 3) vs model (128, 128)" in msg


def test_checkpoint_with_wrong_shape_names_shapes(tmp_path: Path) -> None:
    path = tmp_path / "mlp10.pt"
    torch.save(build_model("mlp", (1, 8, 8), 10).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(build_model("mlp", (1, 8, 8), 5), path)
    msg = str(info.value)
    assert "5.weight: checkpoint (10, 128) vs model (5, 128)" in msg
    assert "5.bias: checkpoint (10,) vs model (5,)" in msg
    assert "missing" not in msg and "unexpected" not in msg


class _RunsCode:
    """Unpickling this calls os.system: the classic malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


class _CustomModel(nn.Module):
    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 2)
        self.marker = marker

    def __setstate__(self, state: dict) -> None:
        Path(state["marker"]).touch()  # would run on unpickling
        super().__setstate__(state)


@pytest.mark.parametrize("payload", [_RunsCode, _CustomModel])
def test_checkpoint_carrying_code_is_refused_unexecuted(tmp_path: Path, payload: type) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    obj = payload(marker)
    torch.save({"layer.weight": torch.zeros(2, 2), "extra": obj}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"refused .*evil\.pt.*weights_only"):
        load_checkpoint(nn.Sequential(nn.Linear(2, 2)), path)
    assert not marker.exists()


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path / 'nope.pt'} does not exist"):
        load_checkpoint(build_model("mlp", (1, 8, 8), 10), tmp_path / "nope.pt")
