"""K-FAC: per layer G_l ~= A (x) S, eigendecomposed; Lambda = e_S e_A^T (divided by T for conv).

A = E_i[sum_t a_it a_it^T], S = E_i[sum_t g_it g_it^T] from pseudo-gradients: pass 1 of
curvature.fit, so K-FAC's bases are EK-FAC's for the same config.
IHVP of a layer-shaped V: Q_S [(Q_S^T V Q_A) / (Lambda + lambda)] Q_A^T.
"""

from __future__ import annotations

import dataclasses

import torch

from ..config import KFACConfig
from ..data.datasets import ImageDataset
from ..progress import Progress, silent
from .base import Curvature, Pairs, matmul_dtype, model_dtype
from .factors import KroneckerFactors, Rotation, cast_factors, heuristic_damping, rotate_conv
from .fit import eigenbases, fit_covariances, plan
from .gradients import TrackedModel
from .task import Task


class KFAC(Curvature):
    name = "kfac"

    def __init__(self, tracked: TrackedModel, factors: list[KroneckerFactors],
                 compute: torch.dtype | None = None) -> None:
        """`compute`: the dtype of self-influence's rotations (None: the factors' own)."""
        self.tracked, self.factors, self.compute = tracked, factors, compute
        self._bases: list[tuple[Rotation, torch.Tensor, torch.Tensor]] | None = None

    def rebased(self, tracked: TrackedModel, damping: float) -> KFAC:
        """The same factors on `tracked` (a model with the same layers and weights) with an
        absolute `damping` for every layer: reuses a fit (e.g. the attribution index's) under
        another damping rule."""
        factors = [dataclasses.replace(f, damping=float(damping)) for f in self.factors]
        return type(self)(tracked, factors, self.compute)

    @classmethod
    def fit(
        cls, tracked: TrackedModel, task: Task, data: ImageDataset, cfg: KFACConfig = KFACConfig(),
        progress: Progress = silent,
    ) -> KFAC:
        """Pass 1 of curvature.fit over `data` (or cfg's covariance examples of it)."""
        dtype = model_dtype(tracked)
        compute = matmul_dtype(cfg.matmul, dtype)
        parts, order = plan(len(data), cfg, covariances=True)
        covs, positions = fit_covariances(tracked, task, data, cfg, parts, progress, order, compute)
        n = float(sum(hi - lo for _, lo, hi in parts))
        factors = []
        for (e_a, q_a, e_s, q_s), t in zip(eigenbases(covs), positions.tolist()):
            # conv: the T positions are counted in both A and S
            lam = torch.outer(e_s / n, e_a / n) / max(t / n, 1.0)
            factors.append(KroneckerFactors(q_a, q_s, lam, heuristic_damping(lam, cfg)))
        return cls(tracked, cast_factors(factors, dtype), compute)

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
