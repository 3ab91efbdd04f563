"""Curvature estimators behind one interface: fit(...) then ihvp(v) = (G + lambda I)^-1 v."""

from __future__ import annotations

from ..config import CURVATURE_CONFIGS
from ..data.datasets import ImageDataset
from ..progress import Progress, silent
from .base import Curvature
from .ekfac import EKFAC
from .exact import ExactGaussNewton, Identity
from .gradients import TrackedModel
from .kfac import KFAC
from .lissa import Lissa, LissaDivergedError
from .task import Task

ESTIMATORS = {"ekfac": EKFAC, "kfac": KFAC, "exact": ExactGaussNewton, "lissa": Lissa,
              "identity": Identity}


def fit_curvature(
    method: str, tracked: TrackedModel, task: Task, data: ImageDataset, cfg: object = None,
    progress: Progress = silent,
) -> Curvature:
    """Fit the named estimator; `cfg` defaults to that estimator's config dataclass."""
    if method not in ESTIMATORS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(ESTIMATORS)}")
    cfg = cfg if cfg is not None else CURVATURE_CONFIGS[method]()
    return ESTIMATORS[method].fit(tracked, task, data, cfg, progress)


__all__ = [
    "EKFAC",
    "ESTIMATORS",
    "KFAC",
    "Curvature",
    "ExactGaussNewton",
    "Identity",
    "Lissa",
    "LissaDivergedError",
    "fit_curvature",
]
