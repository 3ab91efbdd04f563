"""EK-FAC: K-FAC's eigenbasis with eigenvalues refitted to the data (George et al. 2018).

Lambda[j, k] = E_i[R_i[j, k]^2], R_i = Q_S^T DW_i Q_A, in one more data pass (pass 2 of
curvature.fit, the same fit the precompute runs). Linear: Lambda = (U*U)^T (V*V) / N per batch,
one matrix product; Conv2d: R_i batched.
"""

from __future__ import annotations

from ..config import EKFACConfig
from ..data.datasets import ImageDataset
from ..progress import Progress, silent
from .base import matmul_dtype, model_dtype
from .factors import cast_factors
from .fit import fit_ekfac
from .gradients import TrackedModel
from .kfac import KFAC
from .task import Task


class EKFAC(KFAC):
    name = "ekfac"

    @classmethod
    def fit(
        cls, tracked: TrackedModel, task: Task, data: ImageDataset,
        cfg: EKFACConfig = EKFACConfig(), progress: Progress = silent,
    ) -> EKFAC:
        """Both fit passes (curvature.fit) over `data`, or over cfg.max_examples of it."""
        dtype = model_dtype(tracked)
        compute = matmul_dtype(cfg.matmul, dtype)
        factors = fit_ekfac(tracked, task, data, cfg, compute, progress)
        return cls(tracked, cast_factors(factors, dtype), compute)
