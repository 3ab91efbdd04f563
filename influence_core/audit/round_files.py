"""A round folder's durable files: built in a temporary folder, each file fsynced, then renamed
into place in one step (audit.rounds describes the layout)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch
from torch import nn


def commit_round(root: Path, number: int, model: nn.Module, arrays: dict[str, torch.Tensor],
                 meta: dict) -> Path:
    """Write the round into a temporary folder (each file fsynced), rename it to root/<number>
    and fsync root; a concurrent retrain that finished first wins. Returns root/<number>."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{number}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write(tmp / "model.pt", lambda f: torch.save(model.state_dict(), f))
        for name, value in arrays.items():
            _write(tmp / f"{name}.npy", lambda f, v=value: np.save(f, v.numpy()))
        _write(tmp / "meta.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))
        _fsync_dir(tmp)
        final = root / str(number)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():
                raise
        _fsync_dir(root)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write(path: Path, dump: object) -> None:
    with open(path, "wb") as f:
        dump(f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale(root: Path) -> None:
    """Delete temporary folders of retrains whose process is gone (killed mid-round); this
    process's own are another thread's retrain in progress (its `finally` removes them)."""
    if not root.is_dir():
        return
    for tmp in root.glob(".tmp-*"):
        pid = int(tmp.name.split("-")[2])
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
