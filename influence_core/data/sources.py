"""Dataset builders: name -> (train, test) ImageDatasets. Registered in `registry.DATASETS`.

digits, MNIST, Fashion-MNIST, CIFAR-10 and image folders keep uint8 pixels in memory; Flowers102
and Food101 load lazily from disk and are resized to 224 x 224 for ImageNet-pretrained models.
A builder whose files are missing (and cannot be downloaded) raises DatasetError naming the path.
"""

from __future__ import annotations

import json
import warnings
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
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}

#: split -> (image paths, 0-based labels), and the class names.
SplitFiles = tuple[dict[str, tuple[list[Path], list[int]]], list[str]]


def _stats(pixels: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
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


def _in_memory_pair(
    cls_name: str, name: str, root: Path, classes: list[str] | None = None
) -> tuple[ImageDataset, ImageDataset]:
    splits = [_torchvision(cls_name, root, train=flag) for flag in (True, False)]
    px = [torch.as_tensor(s.data, dtype=torch.uint8) for s in splits]  # (N, H, W[, 3])
    mean, std = _stats(px[0])
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
    except Exception:  # noqa: BLE001  files missing, or an md5 check failing on a hand-made copy
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


def _class_files(folder: Path) -> dict[str, list[Path]]:
    return {
        d.name: sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))
        for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")
    }


def _verified(path: Path) -> tuple[tuple[int, int], bool]:
    with Image.open(path) as im:
        im.verify()  # structure and checksums; the image can't be used after verify
    with Image.open(path) as im:
        im.load()  # decodes everything: catches truncated files that verify misses
        return im.size, im.mode in GREY_MODES


def _pixels(paths: list[Path], side: int, grey: bool) -> torch.Tensor:
    mode = "L" if grey else "RGB"
    arrays = []
    for p in paths:
        with Image.open(p) as im:
            im.draft(mode, (side, side))  # JPEG: decode at a reduced scale, much faster
            small = im.convert(mode).resize((side, side), Image.Resampling.BILINEAR)
            arrays.append(np.asarray(small, dtype=np.uint8))
    empty = (0, side, side) if grey else (0, side, side, 3)
    return torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros(empty, dtype=torch.uint8)


def _scan(files: dict[str, list[Path]], classes: list[str]) -> tuple[dict, list]:
    """Verify every file: ({path: (label, size, grey)} of the valid ones, [(path, reason)])."""
    found, skipped = {}, []
    for name, paths in files.items():
        for p in paths:
            try:
                size, grey = _verified(p)
            except Exception as exc:  # noqa: BLE001  PIL raises OSError, SyntaxError, bombs...
                skipped.append((str(p), f"{type(exc).__name__}: {exc}"))
            else:
                found[p] = (classes.index(name), size, grey)
    return found, skipped


def imagefolder(root: Path) -> tuple[ImageDataset, ImageDataset]:
    """Your own images: root/<class>/<image>, or root/train/<class>/... and root/test/<class>/...
    when both exist; otherwise a seeded stratified 80/20 split (random_state=0).

    Class names are the sorted folder names; index order is sorted class, then sorted file path.
    Every file (dotfiles aside) is opened, verified and decoded; files that fail are skipped,
    listed in `skipped` as (path, reason) and named in a warning (in the 80/20 case all skips are
    listed on the train split). Pixels stay in memory: every image is resized (bilinear, aspect
    ratio not kept) to one square side, the median of the shorter sides clamped to [8, 64];
    grey if every image is grey, else RGB. Normalised with the train split's mean and std."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"imagefolder: {root} is not a folder")
    dirs = {"train": root / "train", "test": root / "test"}
    dirs = dirs if all(d.is_dir() for d in dirs.values()) else {"train": root}
    files = {s: _class_files(d) for s, d in dirs.items()}
    classes = sorted(set().union(*files.values()))
    scans = {s: _scan(f, classes) for s, f in files.items()}
    found = {s: sc[0] for s, sc in scans.items()}
    skipped = {"test": [], **{s: sc[1] for s, sc in scans.items()}}
    bad = skipped["train"] + skipped["test"]
    if bad:
        shown = "; ".join(f"{p} ({why})" for p, why in bad[:10])
        more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
        warnings.warn(f"imagefolder {root}: skipped {len(bad)} unreadable file(s): {shown}{more}",
                      stacklevel=2)
    if not found["train"]:
        raise DatasetError(f"imagefolder: no readable images in class folders under {root}")
    entries = [e for f in found.values() for e in f.values()]
    side = int(np.clip(np.median([min(size) for _, size, _ in entries]), 8, 64))
    grey = all(g for _, _, g in entries)
    if "test" not in found:
        found = _split_80_20(root, found["train"])
    pixels = {s: _pixels(list(found[s]), side, grey) for s in ("train", "test")}
    mean, std = _stats(pixels["train"])
    return tuple(
        ImageDataset("imagefolder", s, classes, torch.tensor([y for y, _, _ in found[s].values()],
                     dtype=torch.long), mean, std, pixels=pixels[s], skipped=skipped[s])
        for s in ("train", "test")
    )


def _split_80_20(root: Path, found: dict) -> dict[str, dict]:
    from sklearn.model_selection import train_test_split

    paths = list(found)
    try:
        tr, te = train_test_split(np.arange(len(paths)), test_size=0.2, random_state=0,
                                  stratify=[found[p][0] for p in paths])
    except ValueError as exc:
        raise DatasetError(f"imagefolder {root}: cannot split 80/20 by class ({exc}). Add images "
                           "(2 or more per class) or give train/ and test/ folders.") from exc
    return {s: {paths[i]: found[paths[i]] for i in sorted(idx)} for s, idx in
            (("train", tr), ("test", te))}
