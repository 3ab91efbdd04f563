"""Exact damped Gauss-Newton inverse: the ground truth for small models.

G = (1/N) sum_i sum_k p_ik g_ik g_ik^T (= (1/N) sum_i J_i^T H_out,i J_i for softmax
cross-entropy), built densely in float64 and eigendecomposed: G = V diag(e) V^T, so that
(G + lambda I)^-1 v = V diag(1 / (e + lambda)) V^T v (+ (v - V V^T v) / lambda when G is
formed through its (NK x NK) Gram matrix because NK < p)."""

from __future__ import annotations

import torch

from ..config import ExactConfig
from ..data.datasets import ImageDataset
from ..progress import Progress, silent
from .base import Curvature, fisher_pairs, iterate, model_dtype
from .gradients import TrackedModel, per_example_grads
from .task import Task

DENSE_LIMIT = 16_384  # beyond this many parameters, eigendecompose the Gram matrix instead


class ExactGaussNewton(Curvature):
    name = "exact"

    def __init__(self, tracked: TrackedModel, basis: torch.Tensor, eigenvalues: torch.Tensor,
                 damping: float) -> None:
        self.tracked, self.basis = tracked, basis
        self.eigenvalues, self.damping = eigenvalues, damping
        self.complete = basis.shape[1] == basis.shape[0]

    @classmethod
    def fit(
        cls, tracked: TrackedModel, task: Task, data: ImageDataset,
        cfg: ExactConfig = ExactConfig(), progress: Progress = silent,
    ) -> ExactGaussNewton:
        p = tracked.num_params
        if p > cfg.max_params:
            raise ValueError(
                f"exact Gauss-Newton needs a dense {p} x {p} matrix; this model tracks {p} > "
                f"max_params={cfg.max_params} parameters: use ekfac, kfac or lissa"
            )
        gen = torch.Generator().manual_seed(cfg.seed)
        rows, dense = [], torch.zeros(p, p, dtype=torch.float64) if p <= DENSE_LIMIT else None
        dtype = model_dtype(tracked)
        for x, y, _ in iterate(data, cfg.batch_size, progress, "exact G", dtype=dtype):
            for pairs in fisher_pairs(tracked, task, x, y, cfg.fisher, gen):
                g = per_example_grads(pairs).double()
                if dense is not None:
                    dense += g.T @ g
                else:
                    rows.append(g)
        n = len(data)
        if dense is not None:
            e, v = torch.linalg.eigh(dense / n)
        else:
            b = torch.cat(rows) / n**0.5  # G = B^T B
            e, u = torch.linalg.eigh(b @ b.T)
            keep = e > e.max() * 1e-12
            e, v = e[keep], (b.T @ u[:, keep]) / e[keep].sqrt()
        e = e.clamp_min(0.0)
        mean = float(e.sum()) / p
        damping = cfg.damping if cfg.damping is not None else cfg.damping_factor * mean
        return cls(tracked, v, e, damping)

    def ihvp(self, vectors: torch.Tensor) -> torch.Tensor:
        v64 = vectors.double()
        coef = v64 @ self.basis  # (k, r)
        out = (coef / (self.eigenvalues + self.damping)) @ self.basis.T
        if not self.complete:
            out += (v64 - coef @ self.basis.T) / self.damping
        return out.to(vectors.dtype)

    def ihvp_layers(self, vectors: list[torch.Tensor]) -> list[torch.Tensor]:
        flat = torch.cat([v.flatten(1) for v in vectors], 1)
        return self.tracked.split(self.ihvp(flat))

    def matrix(self) -> torch.Tensor:
        """The dense G (p, p), float64 (for diagnostics on small models)."""
        return (self.basis * self.eigenvalues) @ self.basis.T


class Identity(Curvature):
    """G + lambda I replaced by I: influence = plain gradient dot product (the baseline)."""

    name = "identity"

    def __init__(self, tracked: TrackedModel) -> None:
        self.tracked = tracked

    @classmethod
    def fit(cls, tracked: TrackedModel, task: Task, data: ImageDataset, cfg: object = None,
            progress: Progress = silent) -> Identity:
        return cls(tracked)

    def ihvp_layers(self, vectors: list[torch.Tensor]) -> list[torch.Tensor]:
        return vectors

    def self_influence(self, pairs: list) -> torch.Tensor:
        total = 0
        for a, g in pairs:
            if a.shape[1] == 1:
                total = total + g[:, 0].pow(2).sum(1) * a[:, 0].pow(2).sum(1)
            else:
                total = total + torch.einsum("bto,bti->boi", g, a).pow(2).sum((1, 2))
        return total
