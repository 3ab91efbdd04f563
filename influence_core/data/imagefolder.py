"""`imagefolder:<path>`: one sub-folder per class, any image format PIL reads, decoded by
data.images.decode_image (16-bit, transparency, CMYK; size capped before decoding). Unreadable
files, and symlinks that point outside the folder, are skipped and named
(ImageDataset.skipped); a folder with a train/ and a test/ split keeps it, otherwise a seeded
stratified 80/20 split is made."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .datasets import DatasetError, ImageDataset
from .images import decode_image
from .sources import pixel_stats

OUTSIDE = "symlink to outside the image folder: not followed"


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _class_files(folder: Path, root: Path) -> tuple[dict[str, list[Path]], list[tuple]]:
    """{class: image files} under folder's class sub-folders, and [(path, reason)] of the
    symlinks that point outside `root` (resolved): named, never followed."""
    files, outside = {}, []
    for d in sorted(folder.iterdir()):
        if d.name.startswith("."):
            continue
        if not _inside(d, root):
            outside.append((str(d), OUTSIDE))
        elif d.is_dir():  # rglob does not descend into symlinked folders
            files[d.name] = []
            for p in sorted(d.rglob("*")):
                if p.name.startswith("."):
                    continue
                if not _inside(p, root):
                    outside.append((str(p), OUTSIDE))
                elif p.is_file():
                    files[d.name].append(p)
    return files, outside


def _verified(path: Path) -> tuple[tuple[int, int], bool]:
    decoded = decode_image(path)  # every pixel: catches truncated files that verify misses
    with Image.open(path) as im:
        im.verify()  # structure and checksums; the image can't be used after verify
    return decoded.size, decoded.mode == "L"


def _pixels(paths: list[Path], side: int, grey: bool) -> torch.Tensor:
    mode = "L" if grey else "RGB"
    arrays = []
    for p in paths:  # JPEG decodes at a reduced scale (draft), much faster
        small = decode_image(p, draft=(mode, (side, side))).convert(mode)
        arrays.append(np.asarray(small.resize((side, side), Image.Resampling.BILINEAR),
                                 dtype=np.uint8))
    empty = (0, side, side) if grey else (0, side, side, 3)
    return torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros(empty, dtype=torch.uint8)


def _scan(files: dict[str, list[Path]], classes: list[str]) -> tuple[dict, list]:
    """Verify every file: ({path: (label, size, grey)} of the valid ones, [(path, reason)])."""
    found, skipped = {}, []
    for name, paths in files.items():
        for p in paths:
            try:
                size, grey = _verified(p)
            except Exception as exc:
                skipped.append((str(p), f"{type(exc).__name__}: {exc}"))
            else:
                found[p] = (classes.index(name), size, grey)
    return found, skipped


def imagefolder(root: Path) -> tuple[ImageDataset, ImageDataset]:
    """Your own images: root/<class>/<image>, or root/train/<class>/... and root/test/<class>/...
    when both exist; otherwise a seeded stratified 80/20 split (random_state=0).

    Class names are the sorted folder names; index order is sorted class, then sorted file path.
    Symlinks that resolve outside root are not followed: skipped and named like unreadable
    files. Every file (dotfiles aside) is opened, verified and decoded; files that fail are skipped,
    listed in `skipped` as (path, reason) and named in a warning (in the 80/20 case all skips are
    listed on the train split). Pixels stay in memory: every image is resized (bilinear, aspect
    ratio not kept) to one square side, the median of the shorter sides clamped to [8, 64];
    grey if every image is grey, else RGB. Normalised with the train split's mean and std."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"imagefolder: {root} is not a folder")
    dirs = {"train": root / "train", "test": root / "test"}
    split = all(d.is_dir() and _inside(d, root) for d in dirs.values())
    listed = {s: _class_files(d, root) for s, d in (dirs if split else {"train": root}).items()}
    files = {s: f for s, (f, _) in listed.items()}
    classes = sorted(set().union(*files.values()))
    scans = {s: _scan(f, classes) for s, f in files.items()}
    found = {s: sc[0] for s, sc in scans.items()}
    skipped = {"test": [], **{s: listed[s][1] + sc[1] for s, sc in scans.items()}}
    bad = skipped["train"] + skipped["test"]
    if bad:
        shown = "; ".join(f"{p} ({why})" for p, why in bad[:10])
        more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
        warnings.warn(f"imagefolder {root}: skipped {len(bad)} unreadable "
                      f"file(s) or symlink(s) to outside it: {shown}{more}",
                      stacklevel=2)
    if not found["train"]:
        raise DatasetError(f"imagefolder: no readable images in class folders under {root}")
    entries = [e for f in found.values() for e in f.values()]
    side = int(np.clip(np.median([min(size) for _, size, _ in entries]), 8, 64))
    grey = all(g for _, _, g in entries)
    if "test" not in found:
        found = _split_80_20(root, found["train"])
    pixels = {s: _pixels(list(found[s]), side, grey) for s in ("train", "test")}
    mean, std = pixel_stats(pixels["train"])
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
