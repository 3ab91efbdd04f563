"""K-FAC: per layer G_l ~= A (x) S, eigendecomposed; Lambda = e_S e_A^T (divided by T for conv).

A = E_i[sum_t a_it a_it^T], S = E_i[sum_t g_it g_it^T] from pseudo-gradients (one data pass).
IHVP of a layer-shaped V: Q_S [(Q_S^T V Q_A) / (Lambda + lambda)] Q_A^T.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch

from ..config import KFACConfig
from ..data.datasets import ImageDataset
from ..progress import Progress, silent
from .base import Curvature, Pairs, fisher_pairs, iterate, matmul_dtype, model_dtype
from .gradients import TrackedModel
from .task import Task

TINY = 1e-20  # eigenvector entries below this are rounding noise, and denormal in float32


@dataclass
class KroneckerFactors:
    """One layer's eigenbasis and diagonal: G_l ~= (Q_S (x) Q_A) diag(Lambda) (Q_S (x) Q_A)^T."""

    q_a: torch.Tensor  # (d_in, d_in)
    q_s: torch.Tensor  # (d_out, d_out)
    eigenvalues: torch.Tensor  # Lambda (d_out, d_in)
    damping: float

    def __post_init__(self) -> None:  # also for bases fitted before eigenbasis() zeroed noise
        self.q_a = torch.where(self.q_a.abs() < TINY, 0.0, self.q_a)
        self.q_s = torch.where(self.q_s.abs() < TINY, 0.0, self.q_s)


class CovarianceSums:
    """Per layer A = sum_t a a^T and S = sum_t g g^T. Each batch is added in the model's dtype
    (in-place GEMMs on the upper block triangle, _panels) to a partial sum that is folded into
    the float64 totals every `fold` batches (0: only on flush()): no float64 copy of a
    d_in x d_in matrix per batch, float32 error bounded. `compute` (e.g. torch.bfloat16): the
    dtype of the products that dominate the
    cost, those of conv layers (T patches per example: mnist/cnn conv2 121); linear layers'
    stay in the model's dtype. A bfloat16 product is rounded to 8 bits before it is summed; on
    a digits CNN, keeping linear layers' products in float32 halved how far the bf16 fit moved
    pairwise scores (from 0.73 to 0.34 of what refitting with another pseudo-label seed moves
    them; tests/test_index.py bounds it by 1)."""

    def __init__(self, tracked: TrackedModel, fold: int = 32,
                 compute: torch.dtype | None = None) -> None:
        self.total = [[torch.zeros(s.d_in, s.d_in, dtype=torch.float64),
                       torch.zeros(s.d_out, s.d_out, dtype=torch.float64)] for s in tracked.specs]
        self.partial: list[list[torch.Tensor]] | None = None
        self.fold, self.batches, self.compute = fold, 0, compute

    def add(self, pairs: Pairs, count_inputs: bool) -> None:
        """A += sum_t a a^T (once per batch: `count_inputs`), S += sum_t g g^T."""
        if self.partial is None:
            self.partial = [[torch.zeros_like(t, dtype=torch.promote_types(g.dtype, torch.float32))
                             for t in c] for c, (_, g) in zip(self.total, pairs)]  # >= float32
        for c, (a, g) in zip(self.partial, pairs):
            conv = a.shape[1] > 1
            if count_inputs:
                self._add(c[0], a.reshape(-1, a.shape[-1]), conv)
            self._add(c[1], g.reshape(-1, g.shape[-1]), conv)
        if count_inputs:
            self.batches += 1
            if self.fold and self.batches % self.fold == 0:
                self.flush()

    def _add(self, total: torch.Tensor, x: torch.Tensor, in_compute: bool) -> None:
        if in_compute and self.compute is not None:
            x = x.to(self.compute)
            total += (x.T @ x).to(total.dtype)
            return
        x = x.to(total.dtype)
        cuts = _panels(x.shape[1])
        for lo, hi in pairwise(cuts):  # block rows of the upper triangle; flush mirrors
            total[lo:hi, lo:].addmm_(x[:, lo:hi].T, x[:, lo:])

    def flush(self) -> None:
        if self.partial is not None:
            for c, part in zip(self.total, self.partial):
                for t, q in zip(c, part):
                    cuts = _panels(q.shape[0])
                    for lo, hi in pairwise(cuts[1:]):
                        q[lo:hi, :lo] = q[:lo, lo:hi].T
                    t += q.double()
                    q.zero_()

    def sums(self) -> list[list[torch.Tensor]]:
        """The float64 totals (all batches so far)."""
        self.flush()
        return self.total


def _panels(d: int) -> list[int]:
    """Cuts of a d x d Gram matrix into block rows of about 96 (at most 6): X^T X accumulates
    only the blocks on and above the diagonal, one GEMM per block row (measured here,
    float32, 2 threads: mnist/cnn conv2's 289 columns x 15488 patch rows 18.2 -> 13.8 ms;
    fc1's 1601 x 128 rows 5.6 -> 3.1 ms)."""
    blocks = max(1, min(6, d // 96))
    return [round(d * i / blocks) for i in range(blocks + 1)]


def fit_covariances(
    tracked: TrackedModel, task: Task, data: ImageDataset, cfg: KFACConfig, progress: Progress
) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """Pass 1: per layer (A, S, mean positions T), averaged over examples (float64); the
    forward and the products in cfg.matmul's dtype."""
    gen = torch.Generator().manual_seed(cfg.seed)
    dtype = model_dtype(tracked)
    compute = matmul_dtype(cfg.matmul, dtype)
    sums, positions = CovarianceSums(tracked, compute=compute), [0.0] * len(tracked.specs)
    with tracked.inputs_in(compute):
        for x, y, _ in iterate(data, cfg.batch_size, progress, "fit covariances", dtype=dtype):
            for draw, pairs in enumerate(fisher_pairs(tracked, task, x, y, cfg.fisher, gen,
                                                      compute)):
                sums.add(pairs, count_inputs=draw == 0)
            for layer, (a, _) in enumerate(pairs):
                positions[layer] += a.shape[1] * a.shape[0]
    n = len(data)
    return [(a / n, s / n, t / n) for (a, s), t in zip(sums.sums(), positions)]


def eigenbasis(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues >= 0, eigenvectors) with rounding-noise entries zeroed: cast to float32
    they would be denormals, which make every product with the basis several times slower.
    Coordinates of variance exactly 0 (a dead ReLU channel's output gradient, an input feature
    that is 0 on every example) are split off first: they keep unit eigenvectors with
    eigenvalue 0, listed first, and every other eigenvector is exactly 0 on them (Side)."""
    dead = cov.diagonal() == 0
    if not dead.any() or dead.all():
        e, q = torch.linalg.eigh(cov)
        return e.clamp_min(0.0), torch.where(q.abs() < TINY, 0.0, q)
    keep, drop = (~dead).nonzero()[:, 0], dead.nonzero()[:, 0]
    e_live, q_live = eigenbasis(cov[keep][:, keep])
    q = cov.new_zeros(cov.shape)
    q[drop, torch.arange(len(drop))] = 1.0
    q[keep[:, None], len(drop) + torch.arange(len(keep))] = q_live
    return torch.cat([e_live.new_zeros(len(drop)), e_live]), q


@dataclass
class Side:
    """One Kronecker factor's eigenbasis as the data passes use it: x (..., d) rotates to
    x[..., coords] @ q, k columns, the live directions `dirs` of the full basis. Skipped: unit
    eigenvectors of eigenvalue exactly 0 (eigenbasis' dead coordinates), whose coordinates
    `dead` are 0 in every captured vector of the fitted data, so their rotated entries are 0.
    A batch with a nonzero there is rotated in the full basis instead (Rotation.sides)."""

    q: torch.Tensor  # (len(coords), len(dirs))
    coords: torch.Tensor | None  # None: every coordinate
    dirs: torch.Tensor
    dead: torch.Tensor

    @classmethod
    def split(cls, q: torch.Tensor, zero: torch.Tensor) -> Side:
        """`zero` (d,) bool: the directions whose eigenvalue (or every Lambda entry) is 0."""
        dead_dirs = (zero & ((q != 0).sum(0) == 1)).nonzero()[:, 0]
        dead = q[:, dead_dirs].abs().argmax(0)
        dirs = _complement(dead_dirs, q.shape[1])
        if len(dead) == 0 or (q[dead][:, dirs] != 0).any():
            return cls.whole(q)
        return cls(q[_complement(dead, q.shape[0])][:, dirs], _complement(dead, q.shape[0]),
                   dirs, dead)

    @classmethod
    def whole(cls, q: torch.Tensor) -> Side:
        """Every coordinate and direction."""
        return cls(q, None, torch.arange(q.shape[1]), torch.zeros(0, dtype=torch.long))

    def take(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.coords is None else x[..., self.coords]


def _complement(idx: torch.Tensor, n: int) -> torch.Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    mask[idx] = False
    return mask.nonzero()[:, 0]


@dataclass
class Rotation:
    """A layer's (A side, S side) for the data passes, and the full basis for batches that
    reach a skipped coordinate."""

    a: Side
    s: Side
    full_a: Side
    full_s: Side

    @classmethod
    def of(cls, q_a: torch.Tensor, q_s: torch.Tensor, zero_a: torch.Tensor | None = None,
           zero_s: torch.Tensor | None = None) -> Rotation:
        """`zero_*`: the directions whose eigenvalue is exactly 0 (None: skip nothing)."""
        full_a, full_s = Side.whole(q_a), Side.whole(q_s)
        return cls(full_a if zero_a is None else Side.split(q_a, zero_a),
                   full_s if zero_s is None else Side.split(q_s, zero_s), full_a, full_s)

    def sides(self, a: torch.Tensor, g: torch.Tensor) -> tuple[Side, Side]:
        """The skipping sides if a and g are 0 on every skipped coordinate, else the full."""
        for side, x in ((self.a, a), (self.s, g)):
            if len(side.dead) and bool(x[..., side.dead].any()):
                return self.full_a, self.full_s
        return self.a, self.s

    def to(self, dtype: torch.dtype) -> Rotation:
        def cast(side: Side) -> Side:
            return Side(side.q.to(dtype), side.coords, side.dirs, side.dead)

        return Rotation(cast(self.a), cast(self.s), cast(self.full_a), cast(self.full_s))


def heuristic_damping(eigenvalues: torch.Tensor, cfg: KFACConfig) -> float:
    return cfg.damping if cfg.damping is not None else cfg.damping_factor * float(eigenvalues.mean())


class KFAC(Curvature):
    name = "kfac"

    def __init__(self, tracked: TrackedModel, factors: list[KroneckerFactors],
                 compute: torch.dtype | None = None) -> None:
        """`compute`: the dtype of self-influence's rotations (None: the factors' own)."""
        self.tracked, self.factors, self.compute = tracked, factors, compute
        self._bases: list[tuple[Rotation, torch.Tensor, torch.Tensor]] | None = None

    @classmethod
    def fit(
        cls, tracked: TrackedModel, task: Task, data: ImageDataset, cfg: KFACConfig = KFACConfig(),
        progress: Progress = silent,
    ) -> KFAC:
        factors = []
        for a, s, t in fit_covariances(tracked, task, data, cfg, progress):
            (e_a, q_a), (e_s, q_s) = eigenbasis(a), eigenbasis(s)
            lam = torch.outer(e_s, e_a) / max(t, 1.0)  # conv: T positions counted twice
            factors.append(KroneckerFactors(q_a, q_s, lam, heuristic_damping(lam, cfg)))
        dtype = model_dtype(tracked)
        return cls(tracked, _cast(factors, dtype), matmul_dtype(cfg.matmul, dtype))

    def ihvp_layers(self, vectors: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for f, v in zip(self.factors, vectors):
            rotated = f.q_s.T @ v.to(f.q_s.dtype) @ f.q_a  # (k, d_out, d_in)
            out.append(f.q_s @ (rotated / (f.eigenvalues + f.damping)) @ f.q_a.T)
        return out

    def self_influence(self, pairs: Pairs) -> torch.Tensor:
        """sum_l sum_jk R_i[j,k]^2 / (Lambda + lambda), R_i = Q_S^T DW_i Q_A, over the
        directions the data reaches (Side). Linear layers use the rank-one form
        rowsum(((U*U) @ M) * (V*V)), U = g Q_S, V = a Q_A; conv layers go through
        rotate_conv. Rotations in `compute`, squares and sums in float32 or wider."""
        total = 0
        for (rot, inv_full, inv_live), (a, g) in zip(self._rotation_bases(), pairs):
            work = inv_full.dtype
            side_a, side_s = rot.sides(a, g)
            inv = inv_live if side_a is rot.a else inv_full
            if a.shape[1] == 1:
                u = (side_s.take(g[:, 0]).to(side_s.q.dtype) @ side_s.q).to(work)
                v = (side_a.take(a[:, 0]).to(side_a.q.dtype) @ side_a.q).to(work)
                total = total + (((u * u) @ inv) * (v * v)).sum(1)
            else:
                r = rotate_conv(side_a.take(a), side_s.take(g), side_a.q, side_s.q).to(work)
                total = total + (r * r).flatten(1) @ inv.flatten()
        return total

    def _rotation_bases(self) -> list[tuple[Rotation, torch.Tensor, torch.Tensor]]:
        """Per layer the Rotation (skipping directions whose Lambda row / column is all 0) in
        the rotations' dtype, 1 / (Lambda + lambda), and its block on the kept directions;
        cached."""
        if self._bases is None:
            self._bases = []
            for f in self.factors:
                zero = f.eigenvalues == 0
                rot = Rotation.of(f.q_a, f.q_s, zero.all(0), zero.all(1))
                inv = 1.0 / (f.eigenvalues + f.damping)
                self._bases.append((rot.to(self.compute or f.q_a.dtype), inv,
                                    inv[rot.s.dirs[:, None], rot.a.dirs].contiguous()))
        return self._bases


def rotate_conv(a: torch.Tensor, g: torch.Tensor, q_a: torch.Tensor, q_s: torch.Tensor
                ) -> torch.Tensor:
    """R_i = Q_S^T DW_i Q_A (B, k_s, k_a) for a conv layer's captured a (B, T, d_in) and
    g (B, T, d_out), DW_i = g_i^T a_i, in the bases' dtype. Never rotates all T patches; the
    cheaper of two orders: with T < d_in (mnist/cnn conv2: 121 < 289) the T output-gradient
    rows are rotated first, (g_i Q_S)^T a_i Q_A; else DW_i is formed first (conv1: 676 > 10)
    in the dtype of the larger of a, g (no copy of it)."""
    dtype = q_a.dtype
    if a.shape[1] < a.shape[2]:
        return torch.einsum("bts,bti->bsi", g.to(dtype) @ q_s, a.to(dtype)) @ q_a
    big = a.dtype if a.numel() >= g.numel() else g.dtype
    dw = torch.einsum("bto,bti->boi", g.to(big), a.to(big)).to(dtype)
    return q_s.T @ dw @ q_a


def _cast(factors: list[KroneckerFactors], dtype: torch.dtype) -> list[KroneckerFactors]:
    return [
        KroneckerFactors(f.q_a.to(dtype), f.q_s.to(dtype), f.eigenvalues.to(dtype), f.damping)
        for f in factors
    ]
