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
from .base import Pairs, fisher_pairs, iterate, matmul_dtype, model_dtype
from .kfac import KFAC, KroneckerFactors, _cast, eigenbasis, fit_covariances, heuristic_damping


class EKFAC(KFAC):
    name = "ekfac"

    @classmethod
    def fit(
        cls, tracked: TrackedModel, task: Task, data: ImageDataset, cfg: EKFACConfig = EKFACConfig(),
        progress: Progress = silent,
    ) -> EKFAC:
        dtype = model_dtype(tracked)
        compute = matmul_dtype(cfg.matmul, dtype)
        bases = []
        for a, s, _ in fit_covariances(tracked, task, data, cfg, progress):
            bases.append((eigenbasis(a)[1].to(dtype), eigenbasis(s)[1].to(dtype)))
        rotate = [(q_a.to(compute or dtype), q_s.to(compute or dtype)) for q_a, q_s in bases]
        lams = [torch.zeros(q_s.shape[0], q_a.shape[0], dtype=torch.float64) for q_a, q_s in bases]
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        with tracked.inputs_in(compute):
            for x, y, _ in iterate(data, cfg.batch_size, progress, "fit eigenvalues", dtype=dtype):
                for pairs in fisher_pairs(tracked, task, x, y, cfg.fisher, gen, compute):
                    add_eigenvalues(lams, rotate, pairs, compute)
        factors = [
            KroneckerFactors(q_a, q_s, lam / len(data), heuristic_damping(lam / len(data), cfg))
            for lam, (q_a, q_s) in zip(lams, bases)
        ]
        return cls(tracked, _cast(factors, dtype), compute)


def add_eigenvalues(
    lams: list[torch.Tensor], bases: list[tuple[torch.Tensor, torch.Tensor]], pairs: Pairs,
    compute: torch.dtype | None = None,
) -> None:
    """In place: Lambda += sum_i R_i^2, R_i = Q_S^T DW_i Q_A, per layer; bases are (Q_A, Q_S).
    Linear: (U*U)^T (V*V) with U = g Q_S, V = a Q_A; conv: DW_i = G_i^T A_i first (cheaper
    than rotating all T patches), then rotated. `compute`: the dtype of the rotations (pass the
    bases in it; e.g. bfloat16), squares and sums in the model's dtype, then float64."""
    for lam, (q_a, q_s), (a, g) in zip(lams, bases, pairs):
        work = torch.promote_types(g.dtype, torch.float32)  # squares and sums: >= float32
        if compute is not None:
            a, g = a.to(compute), g.to(compute)
        if a.shape[1] == 1:
            u, v = (g[:, 0] @ q_s).to(work), (a[:, 0] @ q_a).to(work)
            lam += ((u * u).T @ (v * v)).double()
        else:
            r = (q_s.T @ torch.einsum("bto,bti->boi", g, a) @ q_a).to(work)
            lam += r.pow(2).sum(0).double()
