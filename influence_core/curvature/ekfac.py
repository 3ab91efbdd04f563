"""EK-FAC: K-FAC's eigenbasis with eigenvalues refitted to the data (George et al. 2018).

Lambda[j, k] = E_i[R_i[j, k]^2], R_i = Q_S^T DW_i Q_A, in one more data pass (pass 2).
Linear: Lambda = (U*U)^T (V*V) / N per batch, one matrix product; Conv2d: R_i batched.
"""

from __future__ import annotations

import torch

from ..config import EKFACConfig
from ..datasets import ImageDataset
from ..gradients import TrackedModel
from ..progress import Progress, silent
from ..task import Task
from .base import fisher_pairs, iterate, model_dtype
from .kfac import KFAC, KroneckerFactors, _cast, eigenbasis, fit_covariances, heuristic_damping


class EKFAC(KFAC):
    name = "ekfac"

    @classmethod
    def fit(
        cls, tracked: TrackedModel, task: Task, data: ImageDataset, cfg: EKFACConfig = EKFACConfig(),
        progress: Progress = silent,
    ) -> EKFAC:
        dtype = model_dtype(tracked)
        bases = []
        for a, s, _ in fit_covariances(tracked, task, data, cfg, progress):
            bases.append((eigenbasis(a)[1].to(dtype), eigenbasis(s)[1].to(dtype)))
        lams = [torch.zeros(q_s.shape[0], q_a.shape[0], dtype=torch.float64) for q_a, q_s in bases]
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        for x, y, _ in iterate(data, cfg.batch_size, progress, "fit eigenvalues", dtype=dtype):
            for pairs in fisher_pairs(tracked, task, x, y, cfg.fisher, gen):
                for lam, (q_a, q_s), (a, g) in zip(lams, bases, pairs):
                    u, v = g @ q_s, a @ q_a
                    if a.shape[1] == 1:
                        lam += ((u[:, 0] ** 2).T @ (v[:, 0] ** 2)).double()
                    else:
                        lam += torch.einsum("bto,bti->boi", u, v).pow(2).sum(0).double()
        factors = [
            KroneckerFactors(q_a, q_s, lam / len(data), heuristic_damping(lam / len(data), cfg))
            for lam, (q_a, q_s) in zip(lams, bases)
        ]
        return cls(tracked, _cast(factors, dtype))
