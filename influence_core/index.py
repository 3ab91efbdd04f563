"""A fast attribution index in the EK-FAC eigenbasis, and queries against it.

Per layer, R_i = Q_S^T DW_i Q_A (d_out, d_in) is example i's gradient in the Kronecker
eigenbasis, and the EK-FAC score is score(q, i) = sum_l sum_jk R_q[j,k] R_i[j,k] / (Lambda + lambda).
The index keeps, over all layers, the `dim` eigen-directions (l, j, k) with the largest
Lambda / (Lambda + lambda) (those that carry the score; the rest are damped away) and stores
x_i = R_i[kept] / sqrt(Lambda[kept] + lambda), float16, (N, dim), memory-mapped. Then
score(q, i) ~= x_q . x_i: a query is one backward pass and one (N, dim) x (dim,) product.
Linear layers: R_i = u_i v_i^T (u = Q_S^T g, v = Q_A^T a), so x_i = u_i[J] * v_i[K] * scale.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .artifacts import ArtifactError, check_manifest, load_tensors, model_hash
from .attribution import Ranked, top_k
from .curvature.ekfac import EKFAC
from .curvature.kfac import KroneckerFactors
from .gradients import TrackedModel, backward_pairs, forward_capture
from .task import ClassificationTask, Task

Pairs = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class IndexConfig:
    dim: int = 8192  # eigen-directions kept over all layers (index width; see README)
    dtype: str = "float16"  # stored precision: float16 | float32
    shard_size: int = 4096  # training examples per resumable (and distributed) shard
    batch_size: int = 512  # examples per forward/backward in the scoring pass
    measurement: str = "loss"  # query measurement f: loss | margin

    def __post_init__(self) -> None:
        if min(self.dim, self.batch_size, self.shard_size) < 1:
            raise ValueError("dim, batch_size and shard_size must be positive")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16 or float32, got {self.dtype!r}")


@dataclass
class EigenProjection:
    """Fitted EK-FAC factors and the kept directions: positions[l] are flat (j * d_in + k);
    columns of x are ordered by descending weight, so x[:, :m] is the index of width m."""

    factors: list[KroneckerFactors]
    positions: list[torch.Tensor]
    order: torch.Tensor  # (dim,) column c of x = concatenated layer column order[c]

    @classmethod
    def select(cls, factors: list[KroneckerFactors], dim: int) -> EigenProjection:
        """Keep the `dim` directions with the largest Lambda / (Lambda + lambda), all layers."""
        weights = torch.cat([(f.eigenvalues / (f.eigenvalues + f.damping)).flatten().double()
                             for f in factors])
        best = torch.topk(weights, min(dim, weights.numel())).indices  # descending weight
        keep = best.sort().values
        bounds = np.cumsum([0] + [f.eigenvalues.numel() for f in factors])
        positions = [keep[(keep >= lo) & (keep < hi)] - lo for lo, hi in pairwise(bounds)]
        order = torch.searchsorted(keep, best)  # column c of x is direction best[c]
        return cls(factors, positions, order)

    @property
    def dim(self) -> int:
        return sum(len(p) for p in self.positions)

    def project(self, pairs: Pairs) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (B, dim) index vectors, (B,) EK-FAC self-influence) from captured (a, g)."""
        feats, self_inf = [], 0
        for f, pos, (a, g) in zip(self.factors, self.positions, pairs):
            inv = 1.0 / (f.eigenvalues + f.damping)  # (d_out, d_in)
            d_in = inv.shape[1]
            scale = inv.flatten()[pos].sqrt()
            a, g = a.to(f.q_a.dtype), g.to(f.q_s.dtype)
            if a.shape[1] == 1:  # rank one: R_i = u_i v_i^T
                u, v = g[:, 0] @ f.q_s, a[:, 0] @ f.q_a  # (B, d_out), (B, d_in)
                self_inf = self_inf + (((u * u) @ inv) * (v * v)).sum(1)
                feats.append(u[:, pos // d_in] * v[:, pos % d_in] * scale)
            else:  # DW_i first, then rotate: cheaper than rotating T positions
                r = f.q_s.T @ torch.einsum("bto,bti->boi", g, a) @ f.q_a  # (B, d_out, d_in)
                self_inf = self_inf + (r * r * inv).sum((1, 2))
                feats.append(r.flatten(1)[:, pos] * scale)
        return torch.cat(feats, 1)[:, self.order], self_inf

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"order": self.order}
        for i, (f, pos) in enumerate(zip(self.factors, self.positions)):
            out.update({f"{i}.q_a": f.q_a, f"{i}.q_s": f.q_s, f"{i}.eigenvalues": f.eigenvalues,
                        f"{i}.damping": torch.tensor([f.damping], dtype=torch.float64),
                        f"{i}.positions": pos})
        return out

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], dtype: torch.dtype) -> EigenProjection:
        layers = range(len({k.split(".")[0] for k in t if "." in k}))
        factors = [KroneckerFactors(t[f"{i}.q_a"].to(dtype), t[f"{i}.q_s"].to(dtype),
                                    t[f"{i}.eigenvalues"].to(dtype), float(t[f"{i}.damping"]))
                   for i in layers]
        return cls(factors, [t[f"{i}.positions"] for i in layers], t["order"])


@dataclass
class AttributionIndex:
    """A loaded index: the model it belongs to, x (N, dim) and the per-example arrays."""

    folder: Path
    manifest: dict
    tracked: TrackedModel
    task: Task
    projection: EigenProjection
    vectors: torch.Tensor  # (N, width) in memory, bfloat16 by default (from the float16 file)
    arrays: dict[str, np.ndarray]  # self_influence, train_loss, train_logits, test_logits, ...


def load_index(
    folder: Path | str, model: nn.Module, expected: dict | None = None, width: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> AttributionIndex:
    """Open a precomputed artifact folder for `model`, keeping the first `width` columns (the
    strongest directions; None: all) in RAM as `dtype` (bfloat16 halves the bytes each query
    reads). Refuses (ArtifactError) when the model's hash, or any field of `expected`
    (e.g. {"method": "ekfac"}), differs from the manifest."""
    folder = Path(folder)
    manifest = check_manifest(folder, {"model_hash": model_hash(model), **(expected or {})})
    model_dtype = next(model.parameters()).dtype
    projection = EigenProjection.from_tensors(load_tensors(folder / "factors.safetensors"),
                                              model_dtype)
    tracked = TrackedModel(model, manifest["layers"])
    arrays = {p.stem: np.load(p, mmap_mode="r") for p in sorted(folder.glob("*.npy"))}
    if "index" not in arrays:
        raise ArtifactError(f"{folder}: index.npy is missing; re-run precompute")
    stored = arrays.pop("index")
    width = stored.shape[1] if width is None else min(width, stored.shape[1])
    vectors = torch.empty(stored.shape[0], width, dtype=dtype)  # a copy in RAM
    for lo in range(0, stored.shape[0], 8192):  # streamed: no float32 copy of the whole index
        chunk = np.array(stored[lo:lo + 8192, :width], dtype=np.float32)
        vectors[lo:lo + 8192] = torch.from_numpy(chunk).to(dtype)
    projection.order = projection.order[:width]
    task = ClassificationTask(manifest["index_config"]["measurement"])
    return AttributionIndex(folder, manifest, tracked, task, projection, vectors, arrays)


def query_vector(index: AttributionIndex, x: torch.Tensor, y: torch.Tensor | int | None) -> torch.Tensor:
    """(dim,) x_q for one query input x (C, H, W) or (1, C, H, W), normalised like the dataset;
    y None: the model's predicted label."""
    x = (x if x.ndim == 4 else x[None]).to(next(index.tracked.model.parameters()).dtype)
    with _one_thread():  # one image: thread hand-offs cost more than they save on a busy CPU
        store, outputs = forward_capture(index.tracked, x)
        if y is None:
            y = outputs.detach().argmax(1)
        y = torch.as_tensor(y).reshape(1)
        pairs = backward_pairs(index.tracked, store, index.task.measurement(outputs, y))
        with torch.no_grad():
            return index.projection.project(pairs)[0][0].float()


@contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def index_scores(index: AttributionIndex, x: torch.Tensor, y: torch.Tensor | int | None = None) -> torch.Tensor:
    """(N,) approximate EK-FAC scores of every training example on the query (positive: helpful)."""
    return (index.vectors @ query_vector(index, x, y).to(index.vectors.dtype)).float()


def query_index(
    index: AttributionIndex, x: torch.Tensor, y: torch.Tensor | int | None = None, k: int = 10
) -> tuple[Ranked, Ranked]:
    """(most helpful, most harmful) training examples for one query image (see index_scores)."""
    return top_k(index_scores(index, x, y), k)


def index_curvature(index: AttributionIndex) -> EKFAC:
    """The index's fitted EK-FAC as a Curvature (uncompressed scores, IHVPs, unlearning)."""
    return EKFAC(index.tracked, index.projection.factors)
