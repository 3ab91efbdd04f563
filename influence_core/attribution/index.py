"""A fast attribution index in the EK-FAC eigenbasis, and queries against it.

Per layer, R_i = Q_S^T DW_i Q_A (d_out, d_in) is example i's gradient in the Kronecker
eigenbasis, and the EK-FAC score is score(q, i) = sum_l sum_jk R_q[j,k] R_i[j,k] M[j,k] with
M = 1 / (Lambda + lambda). Two kinds of layer, stored two ways in one (N, D) float16 array:

- Rank-one layers (Linear on one vector per example: R_i = u_i v_i^T, u = Q_S^T g, v = Q_A^T a)
  are stored exactly as their factors u_i, v_i (d_out + d_in numbers instead of d_out * d_in;
  directions with Lambda / (Lambda + lambda) < 1e-6 everywhere, e.g. dead ReLU inputs, dropped).
  A query's kernel K_q = diag(u_q) M diag(v_q) is cut to its `rank` leading singular pairs
  (p_r, w_r), so score_l(q, i) = sum_r (u_i . p_r)(v_i . w_r): exact when rank covers it.
- Other layers (Conv2d: a sum over positions) keep, over all of them, the `dim` eigen-directions
  with the largest Lambda / (Lambda + lambda) (the expected share of a gradient's whitened
  energy) as x_i = R_i[kept] / sqrt(Lambda[kept] + lambda); those columns come first, ordered by
  weight, so a prefix is a narrower index.

Measured on mnist/cnn (README, `bench query`, 100 queries x 60k): 4096 conv directions plus the
factorised linear layers (5198 columns, rank 16) keep Spearman 0.967 with uncompressed EK-FAC,
where 8192 eigen-directions over all layers kept 0.67.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..artifacts import ArtifactError, check_manifest, load_tensors, model_hash
from ..curvature.ekfac import EKFAC
from ..curvature.factors import KroneckerFactors
from ..curvature.gradients import LAYOUT, TrackedModel, backward_pairs, forward_capture
from ..curvature.task import ClassificationTask, Task
from ..runtime import cpu_has_bf16_units
from .scores import Ranked, top_k

Pairs = list[tuple[torch.Tensor, torch.Tensor]]
LIVE = 1e-6  # a factor direction is kept when some Lambda / (Lambda + lambda) reaches this


def rank_one_layers(tracked: TrackedModel, x: torch.Tensor) -> list[bool]:
    """Which tracked layers see one input vector per example (T = 1), probed on a batch x."""
    store, outputs = forward_capture(tracked, x)
    return [a.shape[1] == 1 for a, _ in backward_pairs(tracked, store, outputs.sum(1))]


@dataclass
class EigenProjection:
    """Fitted EK-FAC factors and what the index keeps of them. Eigen part: positions[l] are
    flat (j * d_in + k) directions of non-factorised layers; column c of that part is direction
    order[c] of their concatenation (descending weight). Factor part: for factorised layers,
    rows[l] / cols[l] are the live S / A eigen-directions; u_i[rows], v_i[cols] follow, layer
    after layer. A layer is factorised when its rows are non-empty."""

    factors: list[KroneckerFactors]
    positions: list[torch.Tensor]
    order: torch.Tensor
    rows: list[torch.Tensor]
    cols: list[torch.Tensor]
    rank: int = 16
    kernels: list[torch.Tensor | None] = field(init=False, repr=False)  # M[rows][:, cols]
    _bases: dict = field(init=False, repr=False, default_factory=dict)  # (layer, dtype) -> Q's

    def __post_init__(self) -> None:
        self.kernels = [(1.0 / (f.eigenvalues + f.damping))[r][:, c] if len(r) else None
                        for f, r, c in zip(self.factors, self.rows, self.cols)]

    @classmethod
    def select(cls, factors: list[KroneckerFactors], dim: int, rank_one: list[bool],
               rank: int = 16) -> EigenProjection:
        """Factorise the rank-one layers; keep the `dim` heaviest directions of the others."""
        weights = [(f.eigenvalues / (f.eigenvalues + f.damping)).double() for f in factors]
        empty = torch.zeros(0, dtype=torch.long)
        rows = [torch.nonzero(w.amax(1) >= LIVE)[:, 0] if r1 else empty
                for w, r1 in zip(weights, rank_one)]
        cols = [torch.nonzero(w.amax(0) >= LIVE)[:, 0] if r1 else empty
                for w, r1 in zip(weights, rank_one)]
        flat = torch.cat([w.flatten() if not r1 else w.new_zeros(0)
                          for w, r1 in zip(weights, rank_one)])
        best = torch.topk(flat, min(dim, flat.numel())).indices  # descending weight
        keep = best.sort().values
        sizes = [w.numel() if not r1 else 0 for w, r1 in zip(weights, rank_one)]
        bounds = np.cumsum([0, *sizes])
        positions = [keep[(keep >= lo) & (keep < hi)] - lo for lo, hi in pairwise(bounds)]
        order = torch.searchsorted(keep, best)  # column c of the eigen part is direction best[c]
        return cls(factors, positions, order, rows, cols, rank)

    @property
    def eigen_dim(self) -> int:
        return len(self.order)

    @property
    def dim(self) -> int:
        return self.eigen_dim + sum(len(r) + len(c) for r, c in zip(self.rows, self.cols))

    def segments(self) -> Iterator[tuple[torch.Tensor, slice, slice]]:
        """(kernel M[rows][:, cols], u columns, v columns) of each factorised layer."""
        start = self.eigen_dim
        for m, r, c in zip(self.kernels, self.rows, self.cols):
            if m is not None:
                mid = start + len(r)
                yield m, slice(start, mid), slice(mid, mid + len(c))
                start += len(r) + len(c)

    def project(self, pairs: Pairs, compute: torch.dtype | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (B, dim) index rows, (B,) exact EK-FAC self-influence) from captured (a, g).
        `compute` (e.g. bfloat16): the dtype of the rotations into the eigenbasis; scaling,
        squares and sums stay in the factors' dtype."""
        eigen, factor, self_inf = [], [], 0
        for layer, (f, pos, rows, cols, (a, g)) in enumerate(zip(
                self.factors, self.positions, self.rows, self.cols, pairs)):
            inv = 1.0 / (f.eigenvalues + f.damping)  # (d_out, d_in)
            d_in, work = inv.shape[1], f.q_a.dtype
            scale = inv.flatten()[pos].sqrt()
            q_a, q_s = self._basis(layer, compute or work)
            a, g = a.to(q_a.dtype), g.to(q_s.dtype)
            if a.shape[1] == 1:  # rank one: R_i = u_i v_i^T
                u, v = (g[:, 0] @ q_s).to(work), (a[:, 0] @ q_a).to(work)  # (B, d_out), (B, d_in)
                self_inf = self_inf + (((u * u) @ inv) * (v * v)).sum(1)
                eigen.append(u[:, pos // d_in] * v[:, pos % d_in] * scale)
                factor += [u[:, rows], v[:, cols]]
            else:  # DW_i first, then rotate: cheaper than rotating T positions
                if len(rows):
                    raise ValueError("a factorised layer saw T > 1 positions per example")
                r = (q_s.T @ torch.einsum("bto,bti->boi", g, a) @ q_a).to(work)  # (B, d_out, d_in)
                self_inf = self_inf + (r * r * inv).sum((1, 2))
                eigen.append(r.flatten(1)[:, pos] * scale)
        return torch.cat([torch.cat(eigen, 1)[:, self.order], *factor], 1), self_inf

    def _basis(self, layer: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q_A, Q_S) of a layer in `dtype`, cast once."""
        key = (layer, dtype)
        if key not in self._bases:
            f = self.factors[layer]
            self._bases[key] = (f.q_a.to(dtype), f.q_s.to(dtype))
        return self._bases[key]

    def scores(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(P, N) approximate EK-FAC scores between index rows a (P, dim) and b (N, dim), in b's
        dtype: the eigen part by a product, each factorised layer through the rank-`rank`
        kernel of each row of a (the score is symmetric: put the shorter side in a)."""
        if len(a) > 16:  # bounded memory: (N, 16 * d_in') at most per layer
            return torch.cat([self.scores(a[lo:lo + 16], b) for lo in range(0, len(a), 16)])
        e = self.eigen_dim
        out = (a[:, :e].to(b.dtype) @ b[:, :e].T).float()
        for m, us, vs in self.segments():
            left, right = _kernel_factors(a[:, us], a[:, vs], m, self.rank)  # (P, d', r) each
            r = left.shape[2]
            bl = b[:, us] @ left.permute(1, 0, 2).reshape(m.shape[0], -1).to(b.dtype)
            br = b[:, vs] @ right.permute(1, 0, 2).reshape(m.shape[1], -1).to(b.dtype)
            out += (bl * br).reshape(len(b), len(a), r).sum(2, dtype=torch.float32).T
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {"order": self.order, "rank": torch.tensor([self.rank])}
        for i, (f, pos) in enumerate(zip(self.factors, self.positions)):
            out.update({f"{i}.q_a": f.q_a, f"{i}.q_s": f.q_s, f"{i}.eigenvalues": f.eigenvalues,
                        f"{i}.damping": torch.tensor([f.damping], dtype=torch.float64),
                        f"{i}.positions": pos, f"{i}.rows": self.rows[i],
                        f"{i}.cols": self.cols[i]})
        return out

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], dtype: torch.dtype) -> EigenProjection:
        layers = range(len({k.split(".")[0] for k in t if "." in k}))
        factors = [KroneckerFactors(t[f"{i}.q_a"].to(dtype), t[f"{i}.q_s"].to(dtype),
                                    t[f"{i}.eigenvalues"].to(dtype), float(t[f"{i}.damping"]))
                   for i in layers]
        return cls(factors, [t[f"{i}.positions"] for i in layers], t["order"],
                   [t[f"{i}.rows"] for i in layers], [t[f"{i}.cols"] for i in layers],
                   int(t["rank"]))

    def narrowed(self, width: int) -> EigenProjection:
        """The same projection keeping only the first `width` eigen-part columns."""
        return EigenProjection(self.factors, self.positions, self.order[:width], self.rows,
                               self.cols, self.rank)


def _kernel_factors(u: torch.Tensor, v: torch.Tensor, m: torch.Tensor, rank: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-`rank` factors (left (P, d_out, r), right (P, d_in, r)) of each kernel
    K_p = diag(u_p) M diag(v_p), by the eigendecomposition of K K^T (float64; d_out <= d_in
    assumed, else of K^T K): left = P_r S_r, right = W_r, exact when rank >= min(d_out, d_in)."""
    kern = u.double()[:, :, None] * m.double() * v.double()[:, None, :]
    flip = kern.shape[1] > kern.shape[2]
    if flip:
        kern = kern.transpose(1, 2)
    vals, vecs = torch.linalg.eigh(kern @ kern.transpose(1, 2))  # ascending
    r = min(rank, vals.shape[1])
    vals, vecs = vals[:, -r:].clamp_min(0), vecs[:, :, -r:]
    sing = vals.sqrt()
    left = vecs * sing[:, None, :]
    right = (kern.transpose(1, 2) @ vecs) / torch.where(sing > 0, sing, 1.0)[:, None, :]
    left, right = left.float(), right.float()
    return (right, left) if flip else (left, right)


@dataclass
class AttributionIndex:
    """A loaded index: the model it belongs to, x (N, dim) and the per-example arrays."""

    folder: Path
    manifest: dict
    tracked: TrackedModel
    task: Task
    projection: EigenProjection
    vectors: torch.Tensor  # (N, dim) in memory, bfloat16 by default (from the float16 file)
    arrays: dict[str, np.ndarray]  # self_influence, train_loss, train_logits, test_logits, ...


def load_index(
    folder: Path | str, model: nn.Module, expected: dict | None = None, width: int | None = None,
    dtype: torch.dtype | None = None,
) -> AttributionIndex:
    """Open a precomputed artifact folder for `model`, keeping the first `width` eigen-part
    columns (the strongest directions; None: all) and every factor column in RAM as `dtype`.
    None: bfloat16 where the CPU has bf16 matrix units (half the bytes each query reads), else
    float32 (without them, a bfloat16 product with the index is 10-15x slower than float32:
    0.91 vs 0.06 s for fc1's 60000 x 928 block on an AVX2 CPU). Refuses (ArtifactError) when
    the model's hash, or any field of `expected` (e.g. {"method": "ekfac"}), differs from the
    manifest."""
    folder = Path(folder)
    if dtype is None:
        dtype = torch.bfloat16 if cpu_has_bf16_units() else torch.float32
    manifest = check_manifest(folder, {"model_hash": model_hash(model), "layout": LAYOUT,
                                       **(expected or {})})
    model_dtype = next(model.parameters()).dtype
    projection = EigenProjection.from_tensors(load_tensors(folder / "factors.safetensors"),
                                              model_dtype)
    tracked = TrackedModel(model, manifest["layers"])
    arrays = {p.stem: np.load(p, mmap_mode="r") for p in sorted(folder.glob("*.npy"))}
    if "index" not in arrays:
        raise ArtifactError(f"{folder}: index.npy is missing; re-run precompute")
    stored = arrays.pop("index")
    eigen = projection.eigen_dim
    width = eigen if width is None else min(width, eigen)
    columns = np.r_[0:width, eigen:stored.shape[1]]
    vectors = torch.empty(stored.shape[0], len(columns), dtype=dtype)  # a copy in RAM
    for lo in range(0, stored.shape[0], 8192):  # streamed: no float32 copy of the whole index
        chunk = np.array(stored[lo:lo + 8192], dtype=np.float32)[:, columns]
        vectors[lo:lo + 8192] = torch.from_numpy(chunk).to(dtype)
    projection = projection.narrowed(width)
    task = ClassificationTask(manifest["index_config"]["measurement"])
    return AttributionIndex(folder, manifest, tracked, task, projection, vectors, arrays)


def query_vector(index: AttributionIndex, x: torch.Tensor, y: torch.Tensor | int | None
                 ) -> torch.Tensor:
    """(dim,) index row x_q for one query input x (C, H, W) or (1, C, H, W), normalised like the
    dataset; y None: the model's predicted label."""
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


def index_scores(index: AttributionIndex, x: torch.Tensor, y: torch.Tensor | int | None = None
                 ) -> torch.Tensor:
    """(N,) approximate EK-FAC scores of every training example on the query (positive: helpful)."""
    return index.projection.scores(query_vector(index, x, y)[None], index.vectors)[0]


def query_index(
    index: AttributionIndex, x: torch.Tensor, y: torch.Tensor | int | None = None, k: int = 10
) -> tuple[Ranked, Ranked]:
    """(most helpful, most harmful) training examples for one query image (see index_scores)."""
    return top_k(index_scores(index, x, y), k)


def index_curvature(index: AttributionIndex) -> EKFAC:
    """The index's fitted EK-FAC as a Curvature (uncompressed scores, IHVPs, unlearning)."""
    return EKFAC(index.tracked, index.projection.factors)
