"""Training-set logits of the checkpoints the suspect signals read, computed once per checkpoint.

The trajectory, dynamics and cross-validation signals need every kept checkpoint's logits on the
training set: on mnist/cnn nine passes over 60,000 images, about half a minute on 2 CPU cores.
They are kept in memory per process and on disk beside the checkpoint
(`<checkpoint>.logits-<n>.pt`), so that opening the app again reads them instead. A file on
disk is used only while it matches: the same checkpoint file (size and modification time) and
the same images (a fingerprint of 16 of them); anything else is recomputed and written again.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..data.datasets import ImageDataset
from ..data.training import predict_logits, save_atomic
from ..progress import Progress

_LOGITS: dict[tuple[str, str], torch.Tensor] = {}  # per process: (file, fingerprint) -> logits


def _fingerprint(checkpoint: Path, data: ImageDataset) -> str:
    stat = checkpoint.stat()
    picks = torch.linspace(0, len(data) - 1, min(16, len(data))).long()
    digest = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}:{len(data)}".encode())
    digest.update(data.tensor(picks).float().numpy().tobytes())
    return digest.hexdigest()[:16]


def _stored(path: Path, fingerprint: str, n: int) -> torch.Tensor | None:
    try:
        blob = torch.load(path, weights_only=True)
        logits = blob["logits"]
        ok = blob["fingerprint"] == fingerprint and logits.shape[0] == n and bool(
            logits.isfinite().all())
    except Exception:  # a missing, stale, truncated or foreign file: recompute it
        return None
    return logits if ok else None


def snapshot_logits(model: nn.Module, data: ImageDataset, checkpoint: str | None = None
                    ) -> torch.Tensor:
    """predict_logits of a kept checkpoint (a model with `checkpoint_file`, or the file given
    as `checkpoint` that holds model's weights) on `data`, computed once (in memory, and on disk
    beside the checkpoint); any other model is simply evaluated. A checkpoint folder that
    cannot be written only loses the disk copy."""
    key = checkpoint or getattr(model, "checkpoint_file", None)
    if key is None:
        return predict_logits(model, data)
    checkpoint = Path(key)
    fingerprint = _fingerprint(checkpoint, data)
    if (key, fingerprint) in _LOGITS:
        return _LOGITS[key, fingerprint]
    path = checkpoint.with_name(f"{checkpoint.stem}.logits-{len(data)}.pt")
    logits = _stored(path, fingerprint, len(data))
    if logits is None:
        logits = predict_logits(model, data)
        with contextlib.suppress(OSError):  # a read-only or full disk: kept in memory only
            save_atomic({"logits": logits, "fingerprint": fingerprint}, path)
    if len(_LOGITS) >= 32:
        _LOGITS.clear()
    _LOGITS[key, fingerprint] = logits
    return logits


def reporting(progress: Progress, what: str, total: int, checkpoint: str | None = None
              ) -> Callable[[nn.Module, ImageDataset], torch.Tensor]:
    """snapshot_logits (its `checkpoint`) that reports each checkpoint done through `progress`
    as `what` k/total (the app's bar names the pass instead of standing still)."""
    done = [0]

    def logits_of(model: nn.Module, data: ImageDataset) -> torch.Tensor:
        progress(done[0], total, what)
        out = snapshot_logits(model, data, checkpoint)
        done[0] += 1
        progress(done[0], total, what)
        return out

    return logits_of
