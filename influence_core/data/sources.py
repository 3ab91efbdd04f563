"""Dataset builders: name -> (train, test) ImageDatasets. Registered in `registry.DATASETS`.

digits, MNIST, Fashion-MNIST and CIFAR-10 (and image folders, imagefolder.py) keep uint8 pixels
in memory; Flowers102 and Food101 load lazily from disk and are resized to 224 x 224 for
ImageNet-pretrained models.
A builder whose files are missing (and cannot be downloaded) raises DatasetError naming the path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .datasets import DatasetError, ImageDataset

DIGIT_NAMES = [str(d) for d in range(10)]
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # lazy sets feed ImageNet-pretrained backbones
IMAGENET_STD = (0.229, 0.224, 0.225)
LAZY_SIZE = 224

#: split -> (image paths, 0-based labels), and the class names.
SplitFiles = tuple[dict[str, tuple[list[Path], list[int]]], list[str]]


def pixel_stats(pixels: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = pixels.float() / 255.0
    if x.ndim == 3:
        return (float(x.mean()),), (float(x.std()),)
    return tuple(x.mean((0, 1, 2)).tolist()), tuple(x.std((0, 1, 2)).tolist())


def digits(root: Path | None = None) -> tuple[ImageDataset, ImageDataset]:
    """scikit-learn's bundled 8x8 digits (1797 images): the offline default, no download.
    Seeded stratified split: 1437 train, 360 test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    pixels = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    idx = np.arange(len(pixels))
    tr, te = train_test_split(idx, test_size=0.2, random_state=0, stratify=bunch.target)
    px_tr, px_te = torch.from_numpy(pixels[tr]), torch.from_numpy(pixels[te])
    mean, std = pixel_stats(px_tr)
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


def _in_memory_pair(
    cls_name: str, name: str, root: Path, classes: list[str] | None = None
) -> tuple[ImageDataset, ImageDataset]:
    splits = [_torchvision(cls_name, root, train=flag) for flag in (True, False)]
    px = [torch.as_tensor(s.data, dtype=torch.uint8) for s in splits]  # (N, H, W[, 3])
    mean, std = pixel_stats(px[0])
    classes = classes or list(splits[0].classes)
    return tuple(
        ImageDataset(name, split, classes, torch.as_tensor(s.targets), mean, std, pixels=p)
        for split, s, p in zip(("train", "test"), splits, px)
    )


def mnist(root: Path) -> tuple[ImageDataset, ImageDataset]:
    """MNIST from torchvision's layout under root (60000 train, 10000 test, 28x28 grey)."""
    return _in_memory_pair("MNIST", "mnist", root, DIGIT_NAMES)


def fashion_mnist(root: Path) -> tuple[ImageDataset, ImageDataset]:
    """Fashion-MNIST from torchvision's layout under root (60000 / 10000, 28x28 grey)."""
    return _in_memory_pair("FashionMNIST", "fashion_mnist", root, FASHION_NAMES)


def cifar10(root: Path) -> tuple[ImageDataset, ImageDataset]:
    """CIFAR-10 from torchvision's layout under root (50000 / 10000, 32x32 RGB, in memory)."""
    return _in_memory_pair("CIFAR10", "cifar10", root)


@dataclass(frozen=True)
class _ImageFiles:
    """Loader of lazy sets: opens the i-th file as RGB (a class, so that datasets pickle)."""

    paths: tuple[Path, ...]

    def __call__(self, i: int) -> Image.Image:
        with Image.open(self.paths[i]) as im:
            return im.convert("RGB")


def _require(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise DatasetError(f"missing {', '.join(missing)}")


def _from_torchvision(cls_name: str, root: Path, download: bool) -> SplitFiles:
    import torchvision.datasets as tvd

    splits, classes = {}, []
    for split in ("train", "test"):
        ds = getattr(tvd, cls_name)(root=str(root), split=split, download=download)
        # torchvision keeps file list and labels in private attributes (stable since 0.12)
        splits[split] = ([Path(p) for p in ds._image_files], list(ds._labels))
        if classes and list(ds.classes) != classes:
            raise DatasetError(f"{cls_name} under {root}: train and test list other classes")
        classes = list(ds.classes)
    return splits, classes


def _read_flowers(root: Path) -> SplitFiles:
    from scipy.io import loadmat

    base = root / "flowers-102"
    _require(base / "jpg", base / "imagelabels.mat", base / "setid.mat")
    try:
        mat = loadmat(base / "imagelabels.mat", squeeze_me=True)["labels"]
        labels = np.atleast_1d(mat).astype(np.int64) - 1  # 1-based in the .mat
        setid = loadmat(base / "setid.mat", squeeze_me=True)
        ids = {s: np.atleast_1d(setid[k]).astype(np.int64) for s, k in
               (("train", "trnid"), ("test", "tstid"))}
    except (KeyError, ValueError, OSError) as exc:
        raise DatasetError(f"cannot read {base}/*.mat: {type(exc).__name__}: {exc}") from exc
    for k in ids.values():
        if len(k) and (k.min() < 1 or k.max() > len(labels)):
            raise DatasetError(f"{base}/setid.mat: image ids outside 1..{len(labels)}")
    splits = {s: ([base / "jpg" / f"image_{i:05d}.jpg" for i in k], labels[k - 1].tolist())
              for s, k in ids.items()}
    import torchvision.datasets as tvd

    names = list(getattr(tvd.Flowers102, "classes", []))
    return splits, names if len(names) == 102 else [f"flower_{k}" for k in range(102)]


def _read_food(root: Path) -> SplitFiles:
    meta = root / "food-101" / "meta"
    images = root / "food-101" / "images"
    _require(images, meta / "classes.txt", meta / "train.json", meta / "test.json")
    classes = [c.strip() for c in (meta / "classes.txt").read_text().splitlines() if c.strip()]
    index = {c: k for k, c in enumerate(classes)}
    splits = {}
    for split in ("train", "test"):
        try:
            listing = json.loads((meta / f"{split}.json").read_text())  # class -> ["class/id"]
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{meta / f'{split}.json'} is not valid JSON: {exc}") from exc
        unknown = sorted(set(listing) - set(index))
        if unknown:
            raise DatasetError(f"{meta / f'{split}.json'}: classes not in classes.txt: {unknown}")
        pairs = [(images / f"{rel}.jpg", index[c]) for c, rels in listing.items() for rel in rels]
        splits[split] = ([p for p, _ in pairs], [y for _, y in pairs])
    return splits, classes


def _lazy_pair(
    name: str, cls_name: str, root: Path, read_layout: Callable[[Path], SplitFiles]
) -> tuple[ImageDataset, ImageDataset]:
    """torchvision's class without download, else our reader of the same layout, else download."""
    try:
        splits, classes = _from_torchvision(cls_name, root, download=False)
    except Exception:
        try:
            splits, classes = read_layout(root)
        except DatasetError as own_exc:
            try:
                splits, classes = _from_torchvision(cls_name, root, download=True)
            except Exception as exc:
                raise DatasetError(
                    f"{name}: no usable copy under {root} ({own_exc}) and the download failed "
                    f"({type(exc).__name__}: {exc}). Pass --data-root: a folder in torchvision's "
                    "layout.") from exc
    out = []
    for split in ("train", "test"):
        paths, labels = splits[split]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DatasetError(f"{name}/{split}: {len(missing)} of {len(paths)} listed images "
                               f"are missing, e.g. {missing[0]}")
        out.append(ImageDataset(
            name, split, classes, torch.as_tensor(labels, dtype=torch.long), IMAGENET_MEAN,
            IMAGENET_STD, loader=_ImageFiles(tuple(paths)), image_size=LAZY_SIZE,
        ))
    return tuple(out)


def flowers102(root: Path) -> tuple[ImageDataset, ImageDataset]:
    """Oxford Flowers-102 under root/flowers-102 (jpg/, imagelabels.mat, setid.mat), lazy.
    Splits: torchvision's "train" (trnid) and "test" (tstid); "val" is not used."""
    return _lazy_pair("flowers102", "Flowers102", root, _read_flowers)


def food101(root: Path) -> tuple[ImageDataset, ImageDataset]:
    """Food-101 under root/food-101 (images/<class>/<id>.jpg, meta/{train,test}.json), lazy."""
    return _lazy_pair("food101", "Food101", root, _read_food)
