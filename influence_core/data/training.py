"""Deterministic training with a progress callback, and checkpoints cached by config hash."""

from __future__ import annotations

import copy
import dataclasses
import errno
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..config import TrainConfig, artifacts_root, config_hash
from ..progress import Progress, silent
from .datasets import ImageDataset, subset_mask
from .models import build_model
from .noise import inject_noise


class TrainingDiverged(ValueError):
    """Training met a non-finite loss (or ended with non-finite weights): nothing was saved."""


@torch.no_grad()
def predict_logits(model: nn.Module, data: ImageDataset, batch_size: int = 128) -> torch.Tensor:
    """Logits (N, K) of `model` on every example of `data`, in index order. A model with
    convolutions runs as a channels-last copy (2x faster on CPUs; same weights)."""
    model.eval()
    convs = any(isinstance(m, nn.Conv2d) for m in model.modules())
    if convs:
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    out = []
    for x, _, _ in data.batches(batch_size):
        if convs and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(model(x))
    return torch.cat(out)


def accuracy(model: nn.Module, data: ImageDataset) -> float:
    return float((predict_logits(model, data).argmax(1) == data.labels).float().mean())


def train_model(
    model: nn.Module,
    data: ImageDataset,
    cfg: TrainConfig,
    indices: torch.Tensor | None = None,
    progress: Progress = silent,
    at_step: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """SGD with momentum and cosine learning-rate decay on `data` (restricted to `indices`);
    `at_step(step, model)` is called after every optimiser step (1..T). Raises TrainingDiverged
    at the first non-finite batch loss.

    Deterministic: batch order comes from a generator seeded with cfg.order_seed (cfg.seed
    when that is -1)."""
    order_src = torch.arange(len(data)) if indices is None else torch.as_tensor(indices)
    gen = torch.Generator().manual_seed(cfg.seed if cfg.order_seed < 0 else cfg.order_seed)
    steps_per_epoch = math.ceil(len(order_src) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total))
    )
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    step = 0
    for _ in range(cfg.epochs):
        order = order_src[torch.randperm(len(order_src), generator=gen)]
        for x, y, _ in data.batches(cfg.batch_size, order):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            _check_loss(loss.detach(), cfg, step + 1, total)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if at_step is not None:
                at_step(step, model)
            if step % 10 == 0 or step == total:
                progress(step, total, f"train {cfg.dataset}/{cfg.model}")
    model.eval()
    return model


def _check_loss(loss: torch.Tensor, cfg: TrainConfig, step: int, total: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingDiverged(
            f"training {cfg.dataset}/{cfg.model} diverged at step {step} of {total}: the loss "
            f"is {loss.item()}; no checkpoint saved. Lower the learning rate (lr={cfg.lr:g}) "
            "or check the data for non-finite pixels")


def _check_weights(model: nn.Module, cfg: TrainConfig) -> None:
    if not all(bool(v.isfinite().all()) for v in model.state_dict().values()
               if v.is_floating_point()):
        raise TrainingDiverged(f"training {cfg.dataset}/{cfg.model} ended with non-finite "
                               f"weights; no checkpoint saved. Lower the learning rate")


def training_labels(train: ImageDataset, cfg: TrainConfig) -> tuple[ImageDataset, torch.Tensor]:
    """The training split with cfg's label noise applied, and the flip mask."""
    if cfg.noise <= 0:
        return train, torch.zeros(len(train), dtype=torch.bool)
    noisy, mask = inject_noise(train, cfg.noise_kind, cfg.noise, cfg.noise_seed)
    return train.with_labels(noisy), mask


def checkpoint_dir(cfg: TrainConfig) -> Path:
    name = cfg.dataset.replace(":", "_").replace("/", "_")[:40]
    return artifacts_root() / "models" / f"{name}-{cfg.model}-{config_hash(cfg)}"


#: Checkpoints every trained model keeps along its own run, read by the suspect signals
#: (audit.suspects): name -> (count, evenly spaced). geometric5: steps T/16, T/8, T/4, T/2, T;
#: even8: T/8, 2T/8, ..., T. Keeping them costs disk (about 12 copies of the weights), not time.
TRAJECTORIES = {"geometric5": (5, False), "even8": (8, True)}


def total_steps(cfg: TrainConfig, n: int) -> int:
    """Optimiser steps of cfg's recipe on n examples."""
    return cfg.epochs * math.ceil(n / cfg.batch_size)


def snapshot_steps(total: int, count: int, even: bool) -> list[int]:
    """The steps (1..total) at which a run keeps `count` checkpoints: evenly spaced T/S, ..., T
    (`even`) or geometrically spaced T/2^(S-1), ..., T/2, T."""
    if even:
        steps = [round(total * (k + 1) / count) for k in range(count)]
    else:
        steps = [round(total / 2 ** (count - 1 - k)) for k in range(count)]
    return [min(max(s, 1), total) for s in steps]


def snapshot_path(cfg: TrainConfig, step: int) -> Path:
    """Where the recipe's own run keeps its checkpoint after `step` optimiser steps."""
    return checkpoint_dir(cfg) / "snapshots" / f"step{step}.pt"


def save_atomic(state: dict, path: Path) -> None:
    """torch.save to `path`.tmp, fsynced, then renamed over `path`: a reader never sees half a
    file. On a failure (a full disk, a read-only folder) the temporary file is removed and
    OSError raised (torch's zip writer reports a failed write as RuntimeError)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, RuntimeError):
            raise OSError(errno.EIO, f"the write failed ({str(exc).splitlines()[0]})",
                          str(tmp)) from exc
        raise


def _save_snapshots(cfg: TrainConfig, kept: dict[int, dict]) -> None:
    for step, state in kept.items():
        path = snapshot_path(cfg, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomic(state, path)


def train_or_load(
    cfg: TrainConfig, train: ImageDataset, test: ImageDataset, progress: Progress = silent
) -> tuple[nn.Module, dict]:
    """Train per `cfg` unless a checkpoint for exactly this config exists; returns (model, meta).

    Saves model.pt (a state_dict) and meta.json (dataset, model, config, seed, test accuracy)."""
    from .models import load_checkpoint

    folder = checkpoint_dir(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, train.shape, train.num_classes)
    if (folder / "meta.json").is_file() and (folder / "model.pt").is_file():
        load_checkpoint(model, folder / "model.pt")
        return model.eval(), json.loads((folder / "meta.json").read_text())
    data, _ = training_labels(train, cfg)
    indices = None
    if cfg.subset_seed >= 0:
        indices = torch.nonzero(subset_mask(len(data), cfg.subset_fraction, cfg.subset_seed))[:, 0]
    total = total_steps(cfg, len(data) if indices is None else len(indices))
    wanted = {s for count, even in TRAJECTORIES.values()
              for s in snapshot_steps(total, count, even)}
    kept: dict[int, dict] = {}

    def keep(step: int, net: nn.Module) -> None:
        if step in wanted:
            kept[step] = copy.deepcopy(net.state_dict())

    start = time.perf_counter()
    train_model(model, data, cfg, indices, progress, keep)
    seconds = time.perf_counter() - start
    _check_weights(model, cfg)
    _save_snapshots(cfg, kept)  # before meta.json: a cached model has its snapshots
    meta = {
        "dataset": cfg.dataset, "model": cfg.model, "seed": cfg.seed,
        "config": dataclasses.asdict(cfg), "config_hash": config_hash(cfg),
        "test_accuracy": accuracy(model, test), "train_seconds": round(seconds, 2),
        "seconds_per_epoch": round(seconds / cfg.epochs, 2),
        "num_train": len(data) if indices is None else len(indices),
        "torch": torch.__version__,
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_atomic(model.state_dict(), folder / "model.pt")
    meta_tmp = folder / "meta.json.tmp"  # atomic too: a run killed here leaves no torn meta
    meta_tmp.write_text(json.dumps(meta, indent=2))
    meta_tmp.replace(folder / "meta.json")
    return model, meta
