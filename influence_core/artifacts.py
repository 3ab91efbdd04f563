"""Artifacts on disk: a folder per content hash, arrays in safetensors / .npy, and a JSON
manifest with the config and provenance that is checked before anything is reused.

A folder's name ends with the hash of everything that determines its contents (dataset, training
config, checkpoint hash, method, configs). Loading compares the manifest with what the caller
expects and refuses on any difference (ArtifactError names the fields); nothing is silently used.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

MANIFEST = "manifest.json"


class ArtifactError(ValueError):
    """An artifact that is missing, incomplete, or was made for another config or checkpoint."""


def model_hash(model: nn.Module, length: int = 16) -> str:
    """sha256 of a model's state_dict (names, dtypes, shapes, bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:length]


def package_versions() -> dict[str, str]:
    import safetensors

    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "safetensors": safetensors.__version__}


def content_key(fields: dict, length: int = 12) -> str:
    """The content hash of a JSON-able dict (sorted keys)."""
    blob = json.dumps(fields, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def write_json(path: Path, payload: dict) -> None:
    """Atomic JSON write (tmp file, fsync, rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder}: no {MANIFEST}; run `python -m influence_core precompute`")
    return json.loads(path.read_text())


def check_manifest(folder: Path, expected: dict) -> dict:
    """The manifest of `folder`, after checking that every key of `expected` matches it and
    that the artifact is complete. Raises ArtifactError listing each mismatch."""
    manifest = read_manifest(folder)
    wrong = [f"{k}: artifact has {manifest.get(k)!r}, expected {v!r}"
             for k, v in expected.items() if _jsonable(manifest.get(k)) != _jsonable(v)]
    if wrong:
        raise ArtifactError(f"{folder} was made for another config or checkpoint; refusing it "
                            f"(re-run precompute): " + "; ".join(wrong))
    if not manifest.get("complete"):
        raise ArtifactError(f"{folder} is incomplete; re-run precompute to resume it")
    return manifest


def _jsonable(value: object) -> object:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """Atomic safetensors write; `meta` values are stored as strings in the header. On a failed
    write (a full disk) the temporary file is removed and OSError raised."""
    tmp = path.with_suffix(".tmp")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={k: json.dumps(v) for k, v in (meta or {}).items()})
        tmp.replace(path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, SafetensorError):  # how safetensors reports an I/O error
            raise OSError(errno.EIO, f"the write failed ({exc})", str(tmp)) from exc
        raise


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def open_array(path: Path, shape: tuple[int, ...], dtype: str, create: bool) -> np.memmap:
    """A memory-mapped .npy array; created (zero-filled) when `create`, else opened r+."""
    if create and not path.is_file():
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    array = np.load(path, mmap_mode="r+")
    if array.shape != shape or array.dtype != np.dtype(dtype):
        raise ArtifactError(f"{path}: shape {array.shape} {array.dtype}, expected {shape} {dtype}")
    return array
