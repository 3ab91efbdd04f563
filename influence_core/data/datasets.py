"""One typed interface for every dataset, and the registry that builds them.

Index i of a split is always the i-th example in the source's own order (torchvision's order for
MNIST & co., scikit-learn's stratified split for digits, sorted class folders for imagefolder).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

Transform = Callable[[Image.Image], torch.Tensor]


class DatasetError(ValueError):
    """A dataset that cannot be built: unknown name, missing files, bad labels."""


@dataclass
class ImageDataset:
    """A labelled image split.

    In-memory sets keep `pixels` (N, H, W) or (N, H, W, C) uint8 and normalise on the fly;
    large sets (Flowers102, Food101, image folders) load lazily through `loader`.
    `labels` are the given labels (possibly noisy); `original_labels` those of the source.
    """

    name: str
    split: str
    class_names: list[str]
    labels: torch.Tensor  # (N,) int64
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixels: torch.Tensor | None = None
    loader: Callable[[int], Image.Image] | None = None
    image_size: int | None = None  # lazy sets are resized to this square size for the model
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    original_labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.labels = torch.as_tensor(self.labels, dtype=torch.long)
        if self.original_labels is None:
            self.original_labels = self.labels.clone()
        if (self.pixels is None) == (self.loader is None):
            raise DatasetError(f"{self.name}/{self.split}: give either pixels or a loader")
        if self.pixels is not None and len(self.pixels) != len(self.labels):
            raise DatasetError(f"{self.name}/{self.split}: {len(self.pixels)} images but "
                               f"{len(self.labels)} labels")
        if self.loader is not None and not self.image_size:
            raise DatasetError(f"{self.name}/{self.split}: a lazy dataset needs image_size")
        bad = (self.labels < 0) | (self.labels >= self.num_classes)
        if bad.any():
            first = int(torch.nonzero(bad)[0])
            raise DatasetError(
                f"{self.name}/{self.split}: label {int(self.labels[first])} at index {first} is "
                f"outside 0..{self.num_classes - 1}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the tensors the model sees."""
        if self.pixels is not None:
            return (self.channels, self.pixels.shape[1], self.pixels.shape[2])
        return (self.channels, self.image_size, self.image_size)

    def image(self, i: int) -> Image.Image:
        """The i-th example as a PIL image, for display."""
        if self.pixels is not None:
            arr = self.pixels[i].numpy()
            return Image.fromarray(arr, mode="L" if arr.ndim == 2 else "RGB")
        return self.loader(i)

    def tensor(self, indices: torch.Tensor | list[int] | slice) -> torch.Tensor:
        """Normalised model inputs (B, C, H, W) float32 for the given indices."""
        if self.pixels is not None:
            x = self.pixels[indices].float().div_(255.0)
            x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        else:
            idx = range(len(self))[indices] if isinstance(indices, slice) else indices
            x = torch.stack([self.to_tensor(self.loader(int(i))) for i in idx])
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std

    def background(self) -> tuple[int, ...]:
        """The colour (0..255, one value per channel) the dataset's images are drawn on: the
        median border pixel of up to 256 in-memory images (MNIST and digits: black), else
        white. Uploads with transparency are composited onto it (data.images)."""
        if self.pixels is None or not len(self.pixels):
            return (255,) * self.channels
        px = self.pixels[:256]
        border = torch.cat([px[:, 0].flatten(0, 1), px[:, -1].flatten(0, 1),
                            px[:, :, 0].flatten(0, 1), px[:, :, -1].flatten(0, 1)])
        border = border.view(-1, self.channels if px.ndim == 4 else 1)
        return tuple(int(v) for v in border.median(0).values)

    def to_tensor(self, img: Image.Image) -> torch.Tensor:
        """An arbitrary PIL image (an upload) converted to this dataset's (C, H, W) in [0, 1]."""
        img = img.convert("L" if self.channels == 1 else "RGB")
        h, w = self.shape[1:]
        if img.size != (w, h):
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()) / 255.0
        return arr.unsqueeze(0) if arr.ndim == 2 else arr.permute(2, 0, 1)

    def normalise(self, img: Image.Image) -> torch.Tensor:
        """An uploaded image as a normalised (1, C, H, W) model input."""
        x = self.to_tensor(img).unsqueeze(0)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        return (x - mean) / torch.tensor(self.std).view(1, -1, 1, 1)

    def with_labels(self, labels: torch.Tensor) -> ImageDataset:
        """The same images with other given labels (noise injection, relabelling)."""
        return dataclasses.replace(self, labels=torch.as_tensor(labels).clone())

    def batches(
        self, batch_size: int, indices: torch.Tensor | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield (x, y, idx) batches over `indices` (default: all, in order)."""
        order = torch.arange(len(self)) if indices is None else torch.as_tensor(indices)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield self.tensor(idx), self.labels[idx], idx


def inject_label_noise(
    labels: torch.Tensor, fraction: float, num_classes: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip round(fraction * N) labels, chosen at random, to a uniformly random OTHER class.

    Returns (noisy_labels, flip_mask). Seeded: the same call gives the same flips."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"noise fraction must be in [0, 1), got {fraction}")
    n = len(labels)
    count = round(fraction * n)
    if count and num_classes < 2:
        raise ValueError("label noise needs at least 2 classes")
    gen = torch.Generator().manual_seed(seed)
    flipped = torch.randperm(n, generator=gen)[:count]
    offset = torch.randint(1, num_classes, (len(flipped),), generator=gen)
    noisy = labels.clone()
    noisy[flipped] = (labels[flipped] + offset) % num_classes
    mask = torch.zeros(n, dtype=torch.bool)
    mask[flipped] = True
    return noisy, mask


def subset_mask(n: int, fraction: float, seed: int) -> torch.Tensor:
    """A seeded random subset of round(fraction * n) indices, as a boolean mask."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=gen)[: round(fraction * n)]] = True
    return mask


def subset(data: ImageDataset, indices: torch.Tensor) -> ImageDataset:
    """The examples at `indices` as a dataset of their own (in-memory or lazy)."""
    indices = torch.as_tensor(indices, dtype=torch.long)
    labels = data.labels[indices]
    original = data.original_labels[indices]
    if data.pixels is not None:
        return dataclasses.replace(data, pixels=data.pixels[indices], labels=labels,
                                   original_labels=original)
    keep = indices.tolist()
    return dataclasses.replace(data, loader=lambda i: data.loader(keep[i]), labels=labels,
                               original_labels=original)
