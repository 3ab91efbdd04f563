"""K-FAC: per layer G_l ~= A (x) S, eigendecomposed; Lambda = e_S e_A^T (divided by T for conv).

A = E_i[sum_t a_it a_it^T], S = E_i[sum_t g_it g_it^T] from pseudo-gradients (one data pass).
IHVP of a layer-shaped V: Q_S [(Q_S^T V Q_A) / (Lambda + lambda)] Q_A^T.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import KFACConfig
from ..datasets import ImageDataset
from ..gradients import TrackedModel
from ..progress import Progress, silent
from ..task import Task
from .base import Curvature, Pairs, fisher_pairs, iterate, matmul_dtype, model_dtype


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
    (one in-place GEMM) to a partial sum that is folded into the float64 totals every `fold`
    batches (0: only on flush()): no float64 copy of a d_in x d_in matrix per batch, float32
    error bounded. `compute` (e.g. torch.bfloat16): the dtype of the products that dominate the
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
        else:
            x = x.to(total.dtype)
            total.addmm_(x.T, x)

    def flush(self) -> None:
        if self.partial is not None:
            for c, part in zip(self.total, self.partial):
                for t, q in zip(c, part):
                    t += q.double()
                    q.zero_()

    def sums(self) -> list[list[torch.Tensor]]:
        """The float64 totals (all batches so far)."""
        self.flush()
        return self.total


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
    they would be denormals, which make every product with the basis several times slower."""
    e, q = torch.linalg.eigh(cov)
    return e.clamp_min(0.0), torch.where(q.abs() < TINY, 0.0, q)


def heuristic_damping(eigenvalues: torch.Tensor, cfg: KFACConfig) -> float:
    return cfg.damping if cfg.damping is not None else cfg.damping_factor * float(eigenvalues.mean())


class KFAC(Curvature):
    name = "kfac"

    def __init__(self, tracked: TrackedModel, factors: list[KroneckerFactors],
                 compute: torch.dtype | None = None) -> None:
        """`compute`: the dtype of self-influence's rotations (None: the factors' own)."""
        self.tracked, self.factors, self.compute = tracked, factors, compute
        self._bases: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

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
        """sum_l sum_jk R_i[j,k]^2 / (Lambda + lambda), R_i = Q_S^T DW_i Q_A. Linear layers use
        the rank-one form rowsum(((U*U) @ M) * (V*V)), U = g Q_S, V = a Q_A; conv layers form
        DW_i = g_i^T a_i first (cheaper than rotating all T patches), then rotate it. Rotations
        in `compute`, squares and sums in float32 or wider."""
        total = 0
        for (q_a, q_s, inv), (a, g) in zip(self._rotation_bases(), pairs):
            work = inv.dtype
            if a.shape[1] == 1:
                u = (g[:, 0].to(q_s.dtype) @ q_s).to(work)
                v = (a[:, 0].to(q_a.dtype) @ q_a).to(work)
                total = total + (((u * u) @ inv) * (v * v)).sum(1)
            else:
                # DW_i in the dtype of the larger of a, g (no copy of it), then rotated in
                # `compute`: mnist/cnn conv1's g is 3x its patches
                dtype = a.dtype if a.numel() >= g.numel() else g.dtype
                dw = torch.einsum("bto,bti->boi", g.to(dtype), a.to(dtype)).to(q_a.dtype)
                r = (q_s.T @ dw @ q_a).to(work)
                total = total + (r * r).flatten(1) @ inv.flatten()
        return total

    def _rotation_bases(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per layer (Q_A, Q_S) in the rotations' dtype and 1 / (Lambda + lambda), cached."""
        if self._bases is None:
            self._bases = [(f.q_a.to(self.compute or f.q_a.dtype),
                            f.q_s.to(self.compute or f.q_s.dtype),
                            1.0 / (f.eigenvalues + f.damping)) for f in self.factors]
        return self._bases


def _cast(factors: list[KroneckerFactors], dtype: torch.dtype) -> list[KroneckerFactors]:
    return [
        KroneckerFactors(f.q_a.to(dtype), f.q_s.to(dtype), f.eigenvalues.to(dtype), f.damping)
        for f in factors
    ]
