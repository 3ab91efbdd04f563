"""How far each estimator's inverse-Hessian-vector product is from the exact damped
Gauss-Newton solve: the one measurement behind the Evaluate page's table (app_api.ihvp_errors)
and `bench core`'s IHVP section."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..attribution.scores import train_gradients
from ..config import CURVATURE_CONFIGS, ExactConfig, LissaConfig
from ..curvature import LissaDivergedError, fit_curvature
from ..curvature.gradients import TrackedModel
from ..curvature.task import ClassificationTask
from ..data.datasets import ImageDataset
from ..progress import Progress, silent
from .metrics import ihvp_error, relative_error

LISSA_BATCH = 256  # examples per LiSSA Hessian-vector product in this measurement


def exact_layers(model: nn.Module, max_params: int | None = None) -> list[str]:
    """The model's last tracked layers, as many as fit `max_params` parameters (the exact solve
    is dense, O(p^3)), at least the last one; None: every tracked layer."""
    names = list(TrackedModel(model).modules)
    if max_params is None:
        return names
    for n in range(len(names), 0, -1):
        if TrackedModel(model, names[-n:]).num_params <= max_params:
            return names[-n:]
    return names[-1:]


def _config(method: str, damping: float):
    """Every estimator at the same damping; K-FAC / EK-FAC on the expected Gauss-Newton G, the
    matrix the exact solve inverts, so their error is that of the Kronecker approximation."""
    if method in ("ekfac", "kfac"):
        return CURVATURE_CONFIGS[method](damping=damping, fisher="expected")
    if method == "lissa":
        return LissaConfig(damping=damping, batch_size=LISSA_BATCH)
    if method == "exact":
        return ExactConfig(damping=damping)
    return None  # identity: no damping


def _error(curv, exact, v: torch.Tensor, depth: int | None = None) -> float:
    """metrics' relative error of curv's IHVP (LiSSA at `depth`) against exact's; NaN when
    LiSSA diverges."""
    try:
        if depth is None:
            return ihvp_error(curv, exact, v)
        return relative_error(curv.ihvp(v, depth=depth), exact.ihvp(v))
    except LissaDivergedError:
        return float("nan")


def ihvp_errors_vs_exact(model: nn.Module, train: ImageDataset,
                         methods: Sequence[str] = ("ekfac", "kfac", "identity"),
                         probes: int = 16, seed: int = 0,
                         multiples: Sequence[float] = (1.0,), lissa_depths: Sequence[int] = (),
                         max_params: int | None = None, progress: Progress = silent) -> dict:
    """Relative error ||ihvp(v) - exact(v)||_F / ||exact(v)||_F of each estimator in
    `methods`, v = training-loss gradients of `probes` seeded training examples (the vectors
    influence uses), on the model's last layers that fit `max_params` (exact_layers), in the
    model's own precision (bench core passes a float64 copy).

    Every estimator uses one damping, the exact solve's default (0.1 x trace(G) / p) times each
    of `multiples`, and K-FAC / EK-FAC fit the same expected Gauss-Newton G. LiSSA in
    `methods` runs at its default depth; `lissa_depths` adds one LiSSA fit per damping measured
    at each depth (NaN where it diverges).

    Returns {"layers", "num_params", "probes", "fisher": "expected", "by_damping": {multiple:
    {"damping": lambda, <method>: error, ..., "lissa_by_depth": {depth: error}}}}, the last
    key only with lissa_depths."""
    tracked, task = TrackedModel(model, exact_layers(model, max_params)), ClassificationTask()
    exact = fit_curvature("exact", tracked, task, train, ExactConfig(), progress)
    base = exact.damping
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:probes]
    v = train_gradients(exact, task, train, idx)  # (k, p)
    out = {"layers": list(tracked.modules), "num_params": tracked.num_params, "probes": len(idx),
           "fisher": "expected", "by_damping": {}}
    try:
        for mult in multiples:
            exact.damping = lam = base * mult  # the eigendecomposition does not depend on it
            row = {"damping": lam}
            for m in methods:
                row[m] = _error(fit_curvature(m, tracked, task, train, _config(m, lam)), exact, v)
            if lissa_depths:
                lissa = fit_curvature("lissa", tracked, task, train, _config("lissa", lam))
                row["lissa_by_depth"] = {d: _error(lissa, exact, v, d) for d in lissa_depths}
            out["by_damping"][mult] = row
    finally:
        exact.damping = base
    return out
