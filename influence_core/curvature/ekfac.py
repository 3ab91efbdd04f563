"""EK-FAC: K-FAC's eigenbasis with eigenvalues refitted to the data (George et al. 2018).

Lambda[j, k] = E_i[R_i[j, k]^2], R_i = Q_S^T DW_i Q_A, in one more data pass (pass 2).
Linear: Lambda = (U*U)^T (V*V) / N per batch, one matrix product; Conv2d: R_i batched.
"""

from __future__ import annotations

import torch

from ..config import EKFACConfig
from ..data.datasets import ImageDataset
from ..progress import Progress, silent
from .base import Pairs, fisher_pairs, iterate, matmul_dtype, model_dtype
from .gradients import TrackedModel
from .kfac import (
    KFAC,
    KroneckerFactors,
    Rotation,
    _cast,
    eigenbasis,
    fit_covariances,
    heuristic_damping,
    rotate_conv,
)
from .task import Task


class EKFAC(KFAC):
    name = "ekfac"

    @classmethod
    def fit(
        cls, tracked: TrackedModel, task: Task, data: ImageDataset, cfg: EKFACConfig = EKFACConfig(),
        progress: Progress = silent,
    ) -> EKFAC:
        dtype = model_dtype(tracked)
        compute = matmul_dtype(cfg.matmul, dtype)
        bases, rotate = [], []
        for a, s, _ in fit_covariances(tracked, task, data, cfg, progress):
            (e_a, q_a), (e_s, q_s) = eigenbasis(a), eigenbasis(s)
            bases.append((q_a.to(dtype), q_s.to(dtype)))
            rotate.append(Rotation.of(q_a, q_s, e_a == 0, e_s == 0).to(compute or dtype))
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
    lams: list[torch.Tensor], bases: list[Rotation], pairs: Pairs,
    compute: torch.dtype | None = None,
) -> None:
    """In place: Lambda += sum_i R_i^2, R_i = Q_S^T DW_i Q_A, per layer, over the Rotation's
    directions (Lambda's skipped rows and columns stay 0). Linear: (U*U)^T (V*V) with
    U = g Q_S, V = a Q_A; conv: rotate_conv. `compute`: the dtype of the rotations (pass the
    bases in it; e.g. bfloat16), squares and sums in the model's dtype, then float64."""
    for lam, rot, (a, g) in zip(lams, bases, pairs):
        work = torch.promote_types(g.dtype, torch.float32)  # squares and sums: >= float32
        if compute is not None:
            a, g = a.to(compute), g.to(compute)
        side_a, side_s = rot.sides(a, g)
        a, g = side_a.take(a), side_s.take(g)
        if a.shape[1] == 1:
            u, v = (g[:, 0] @ side_s.q).to(work), (a[:, 0] @ side_a.q).to(work)
            block = ((u * u).T @ (v * v)).double()
        else:
            block = rotate_conv(a, g, side_a.q, side_s.q).to(work).pow(2).sum(0).double()
        if side_a is rot.full_a:
            lam += block
        else:
            lam.index_put_((side_s.dirs[:, None], side_a.dirs), block, accumulate=True)
