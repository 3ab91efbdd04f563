"""The registry: dataset and model names -> a typed Problem (model, train, test, config)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import TrainConfig, default_data_root
from ..progress import Progress, silent
from . import sources
from .datasets import DatasetError, ImageDataset
from .imagefolder import imagefolder
from .models import MODELS, load_checkpoint
from .training import checkpoint_dir, train_or_load, training_labels

DATASETS: dict[str, Callable[[Path], tuple[ImageDataset, ImageDataset]]] = {
    "digits": sources.digits,
    "mnist": sources.mnist,
    "fashion_mnist": sources.fashion_mnist,
    "cifar10": sources.cifar10,
    "flowers102": sources.flowers102,
    "food101": sources.food101,
}


@dataclass
class Problem:
    """Everything an audit needs: the trained model and both splits.

    `train.labels` are the labels the model was trained on (noisy if cfg.noise > 0);
    `flip_mask` marks the injected flips."""

    config: TrainConfig
    model: nn.Module
    train: ImageDataset
    test: ImageDataset
    flip_mask: torch.Tensor
    meta: dict

    @property
    def checkpoint(self) -> Path:
        return checkpoint_dir(self.config) / "model.pt"


_CACHE: dict[tuple[str, str], tuple[ImageDataset, ImageDataset]] = {}


def load_dataset(
    name: str, data_root: Path | str | None = None
) -> tuple[ImageDataset, ImageDataset]:
    """(train, test) for a registered name or `imagefolder:<path>`; cached per process.

    Raises DatasetError (naming the path) when the files are missing and cannot be downloaded."""
    root = Path(data_root) if data_root is not None else default_data_root()
    key = (name, str(root))
    if key not in _CACHE:
        if name.startswith("imagefolder:"):
            folder = name.split(":", 1)[1].strip()
            if not folder:  # Path("") is the current directory: never train on that by accident
                raise DatasetError("imagefolder: needs a folder path: imagefolder:<path>")
            _CACHE[key] = imagefolder(Path(folder))
        elif name in DATASETS:
            _CACHE[key] = DATASETS[name](root)
        else:
            raise DatasetError(
                f"unknown dataset {name!r}; choose one of {sorted(DATASETS)} or imagefolder:<path>"
            )
    return _CACHE[key]


def load_problem(
    cfg: TrainConfig,
    data_root: Path | str | None = None,
    checkpoint: Path | str | None = None,
    progress: Progress = silent,
) -> Problem:
    """Build the datasets, then train (or reuse the cached checkpoint for this exact config).

    With `checkpoint`, the user's own state_dict is loaded instead (weights_only=True)."""
    if cfg.model not in MODELS:
        raise ValueError(f"unknown model {cfg.model!r}; choose one of {sorted(MODELS)}")
    train, test = load_dataset(cfg.dataset, data_root)
    if checkpoint is not None:
        from .models import build_model
        from .training import accuracy

        model = load_checkpoint(build_model(cfg.model, train.shape, train.num_classes), checkpoint)
        meta = {"checkpoint": str(checkpoint), "test_accuracy": accuracy(model, test)}
    else:
        model, meta = train_or_load(cfg, train, test, progress)
    noisy, mask = training_labels(train, cfg)
    return Problem(cfg, model.eval(), noisy, test, mask, meta)
