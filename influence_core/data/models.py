"""Model builders: name -> nn.Module adapted to a dataset's (C, H, W) and class count, and
checkpoint loading that never runs code (`weights_only=True`)."""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, carrying code, or of another architecture."""


def mlp(shape: tuple[int, int, int], num_classes: int, hidden: int = 128) -> nn.Module:
    """Flatten -> Linear(d, 128) -> ReLU -> Linear(128, 128) -> ReLU -> Linear(128, K)."""
    d = shape[0] * shape[1] * shape[2]
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(d, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def cnn(shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The paper's simple CNN: two 3x3 convolutions (32, 64) each with 2x2 max pooling, then
    Linear(., 128) and Linear(128, K). On 28x28 inputs the first linear layer is 1600 x 128;
    inputs smaller than 16 pixels get padding 1 so that two poolings fit."""
    pad = 1 if shape[1] < 16 else 0
    features = nn.Sequential(
        nn.Conv2d(shape[0], 32, 3, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
    )
    with torch.no_grad():
        flat = features(torch.zeros(1, *shape)).shape[1]
    return nn.Sequential(*features, nn.Linear(flat, 128), nn.ReLU(), nn.Linear(128, num_classes))


class _Adapt(nn.Module):
    """Resize to the backbone's input size and repeat grey images to three channels."""

    def __init__(self, size: int, channels: int) -> None:
        super().__init__()
        self.size, self.repeat = size, 3 if channels == 1 else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear")
        return x.repeat(1, self.repeat, 1, 1) if self.repeat > 1 else x


def _pretrained(arch: str) -> nn.Module:
    """torchvision's `arch` with its default ImageNet weights, or randomly initialised (with a
    warning) when they are neither in the torch hub cache nor downloadable."""
    import torchvision.models as tvm

    net = tvm.get_model(arch, weights=None)
    weights = tvm.get_model_weights(arch).DEFAULT
    try:
        net.load_state_dict(weights.get_state_dict(progress=False, check_hash=True))
    except Exception as exc:
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        warnings.warn(
            f"{arch}: pretrained ImageNet weights could not be loaded ({type(exc).__name__}: "
            f"{exc}). Using RANDOM initialisation instead: expect much lower accuracy. To use "
            f"the pretrained weights offline, copy {weights.url} to {cache}.",
            stacklevel=4,
        )
    return net


def _torchvision_model(arch: str, size: int) -> Callable[[tuple[int, int, int], int], nn.Module]:
    def build(shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        if shape[0] not in (1, 3):
            raise ValueError(f"{arch} takes 1- or 3-channel images, got {shape[0]} channels")
        net = _pretrained(arch)
        if hasattr(net, "fc"):  # ResNet
            net.fc = nn.Linear(net.fc.in_features, num_classes)
        else:  # ViT
            net.heads.head = nn.Linear(net.heads.head.in_features, num_classes)
        return nn.Sequential(_Adapt(size, shape[0]), net)

    return build


MODELS: dict[str, Callable[[tuple[int, int, int], int], nn.Module]] = {  # (C, H, W), classes
    "mlp": mlp,
    "cnn": cnn,
    "resnet18": _torchvision_model("resnet18", 224),
    "resnet50": _torchvision_model("resnet50", 224),
    "vit_b_16": _torchvision_model("vit_b_16", 224),
}


def channels_last(model: nn.Module) -> nn.Module:
    """A CNN's parameters in channels-last layout, in place (same values; on CPU its forward is
    ~2x faster, max-pooling vectorising over channels); other models unchanged."""
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
    return model


def build_model(name: str, shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A fresh `name` model for (C, H, W) inputs and `num_classes` outputs (logits)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](shape, num_classes)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state_dict saved with torch.save into `model`, in place.

    Uses `weights_only=True`, so a pickle that carries code is refused; a checkpoint of another
    architecture raises CheckpointError naming every missing, unexpected and mismatched key,
    and one whose weights are not all finite raises CheckpointError naming the tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refused {path}: it is not a plain state_dict of tensors (it would need to run "
            f"code to load; only weights_only checkpoints are accepted). Detail: {exc}"
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path} (truncated, or not written by "
                              f"torch.save?): {_first_line(exc)}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state_dict (a dict of tensors)")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected)}")
        if mismatched:
            parts.append(f"mismatched shapes: {'; '.join(mismatched)}")
        raise CheckpointError(f"{path} does not fit this model. " + ". ".join(parts))
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights (NaN or inf) in "
                              f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}: refused")
    model.load_state_dict(state)
    return model
