"""How good is an attribution, as numbers: LDS (Park et al. 2023), mislabel-detection curves,
AUROC / AUPRC and the relative IHVP error. The experiments that produce their inputs are in
lds.py, mislabel.py and ihvp.py; the report files in reports.py.

Conventions (MATH.md): scores tau(q, i) are helpful-positive with a loss-like measurement
f = -margin, so the summed attribution of a subset predicts the query's MARGIN (higher = better);
suspect scores are higher-is-more-suspect.
"""

from __future__ import annotations

import numpy as np
import torch

from ..curvature.base import Curvature

BUDGETS = (0.1, 0.2, 0.3, 0.4, 0.5)  # fractions of the training set inspected


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank), as scipy's rankdata."""
    from scipy.stats import rankdata

    return rankdata(x, axis=-1)


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(Q,) Spearman correlation between matching rows of a and b, both (Q, M); NaN for a row
    that is constant in either."""
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    denom = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(1) / denom, np.nan)


def lds(scores: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray,
        outputs: torch.Tensor | np.ndarray) -> tuple[float, np.ndarray]:
    """Linear datamodeling score: (mean over queries, per-query values).

    scores (Q, N) tau(q, i); masks (M, N) bool, subset j's members; outputs (Q, M) the query's
    measured margin under the model trained on subset j. Per query: Spearman over j of
    (outputs[q, j], g_j(q) = sum_{i in S_j} tau(q, i))."""
    scores = np.asarray(scores, dtype=np.float64)
    masks = np.asarray(masks, dtype=np.float64)
    predicted = scores @ masks.T  # (Q, M)
    per_query = spearman_rows(np.asarray(outputs, float), predicted)
    return float(np.nanmean(per_query)), per_query


def mislabel_curve(
    suspect: torch.Tensor | np.ndarray, flipped: torch.Tensor | np.ndarray,
    budgets: tuple[float, ...] = BUDGETS,
) -> dict[float, float]:
    """Fraction of flipped labels among the top round(b N) suspects, for each budget b.

    suspect (N,) higher = more suspect; flipped (N,) bool. Ties are broken by index (stable)."""
    suspect, flipped = np.asarray(suspect, float), np.asarray(flipped, bool)
    order = np.argsort(-suspect, kind="stable")
    found = np.cumsum(flipped[order])
    total = max(int(flipped.sum()), 1)
    return {b: float(found[max(round(b * len(order)), 1) - 1] / total) for b in budgets}


def auroc(suspect: torch.Tensor | np.ndarray, flipped: torch.Tensor | np.ndarray) -> float:
    """Area under the ROC curve of `suspect` for detecting `flipped` (Mann-Whitney, ties 1/2)."""
    s, y = np.asarray(suspect, float), np.asarray(flipped, bool)
    ranks = _ranks(s)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def auprc(suspect: torch.Tensor | np.ndarray, flipped: torch.Tensor | np.ndarray) -> float:
    """Average precision: mean over flipped examples of the precision at their rank."""
    s, y = np.asarray(suspect, float), np.asarray(flipped, bool)
    hits = y[np.argsort(-s, kind="stable")]
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def detection_summary(suspect: torch.Tensor | np.ndarray, flipped: torch.Tensor | np.ndarray,
                      budgets: tuple[float, ...] = BUDGETS) -> dict:
    """{'curve': {budget: fraction found}, 'auroc', 'auprc'} for one suspect ranking."""
    curve = mislabel_curve(suspect, flipped, budgets)
    return {"curve": {f"{b:.2f}": v for b, v in curve.items()},
            "auroc": auroc(suspect, flipped), "auprc": auprc(suspect, flipped)}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want||_F / ||want||_F, in float64."""
    got, want = got.double(), want.double()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def ihvp_error(curv: Curvature, reference: Curvature, vectors: torch.Tensor) -> float:
    """Relative error ||ihvp(v) - ihvp_ref(v)||_F / ||ihvp_ref(v)||_F over vectors (k, p)."""
    return relative_error(curv.ihvp(vectors), reference.ihvp(vectors))
