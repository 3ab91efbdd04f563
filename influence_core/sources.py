"""Dataset builders: name -> (train, test) ImageDatasets. Registered in `registry.DATASETS`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .datasets import DatasetError, ImageDataset

DIGIT_NAMES = [str(d) for d in range(10)]
FASHION_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


def _stats(pixels: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = pixels.float() / 255.0
    dims = (0, 1, 2)
    if x.ndim == 3:
        return (float(x.mean()),), (float(x.std()),)
    return tuple(x.mean(dims).tolist()), tuple(x.std(dims).tolist())


def digits(root: Path | None = None) -> tuple[ImageDataset, ImageDataset]:
    """scikit-learn's bundled 8x8 digits (1797 images): the offline default, no download."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    pixels = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    idx = np.arange(len(pixels))
    tr, te = train_test_split(idx, test_size=0.2, random_state=0, stratify=bunch.target)
    px_tr, px_te = torch.from_numpy(pixels[tr]), torch.from_numpy(pixels[te])
    mean, std = _stats(px_tr)
    return (
        ImageDataset("digits", "train", DIGIT_NAMES, torch.from_numpy(bunch.target[tr]),
                     mean, std, pixels=px_tr),
        ImageDataset("digits", "test", DIGIT_NAMES, torch.from_numpy(bunch.target[te]),
                     mean, std, pixels=px_te),
    )


def _torchvision(cls_name: str, root: Path, **kwargs: object) -> object:
    """Read torchvision's on-disk layout; download only when the files are missing."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    try:
        return cls(root=str(root), download=False, **kwargs)
    except (RuntimeError, FileNotFoundError):
        pass
    try:
        return cls(root=str(root), download=True, **kwargs)
    except Exception as exc:  # no network, a proxy, a half-written file...
        raise DatasetError(
            f"{cls_name} is not under {root} and could not be downloaded ({exc}). "
            f"Pass --data-root pointing at a folder holding torchvision's layout."
        ) from exc


def _grey_pair(cls_name: str, name: str, classes: list[str], root: Path):
    splits = [_torchvision(cls_name, root, train=flag) for flag in (True, False)]
    px = [torch.as_tensor(s.data, dtype=torch.uint8) for s in splits]
    mean, std = _stats(px[0])
    return tuple(
        ImageDataset(name, split, classes, torch.as_tensor(s.targets), mean, std, pixels=p)
        for split, s, p in zip(("train", "test"), splits, px)
    )


def mnist(root: Path) -> tuple[ImageDataset, ImageDataset]:
    return _grey_pair("MNIST", "mnist", DIGIT_NAMES, root)


def fashion_mnist(root: Path) -> tuple[ImageDataset, ImageDataset]:
    return _grey_pair("FashionMNIST", "fashion_mnist", FASHION_NAMES, root)
