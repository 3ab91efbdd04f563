"""How good is an attribution? LDS (Park et al. 2023), mislabel-detection curves, IHVP error, and
the reports the app's Evaluate page reads (JSON + Markdown + plotly figures in one folder).

Conventions (MATH.md): scores tau(q, i) are helpful-positive with a loss-like measurement
f = -margin, so the summed attribution of a subset predicts the query's MARGIN (higher = better);
suspect scores are higher-is-more-suspect.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .curvature.base import Curvature

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


def ihvp_error(curv: Curvature, reference: Curvature, vectors: torch.Tensor) -> float:
    """Relative error ||ihvp(v) - ihvp_ref(v)||_F / ||ihvp_ref(v)||_F over vectors (k, p)."""
    got, want = curv.ihvp(vectors).double(), reference.ihvp(vectors).double()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


# ---- reports: <folder>/<name>.json, <name>.md, <name>.<figure>.json/.html ---------------------


def write_report(folder: Path | str, name: str, result: dict, markdown: str,
                 figures: dict[str, object]) -> Path:
    """Write result (JSON), a Markdown table and plotly figures (JSON for the app, HTML to open)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2, default=float))
    (folder / f"{name}.md").write_text(markdown)
    for key, fig in figures.items():
        (folder / f"{name}.{key}.plotly.json").write_text(fig.to_json())
        fig.write_html(folder / f"{name}.{key}.html", include_plotlyjs="cdn")
    return folder / f"{name}.json"


def load_reports(folder: Path | str) -> dict[str, dict]:
    """Every report in `folder`: name -> {'result': dict, 'markdown': str, 'figures': {key:
    plotly Figure}}. An absent folder gives {}."""
    import plotly.io as pio

    folder = Path(folder)
    reports: dict[str, dict] = {}
    if not folder.is_dir():
        return reports
    for path in sorted(folder.glob("*.json")):
        if path.name.endswith(".plotly.json"):
            continue
        name = path.stem
        md = folder / f"{name}.md"
        figures = {
            f.name[len(name) + 1: -len(".plotly.json")]: pio.from_json(f.read_text())
            for f in sorted(folder.glob(f"{name}.*.plotly.json"))
        }
        reports[name] = {"result": json.loads(path.read_text()),
                         "markdown": md.read_text() if md.is_file() else "", "figures": figures}
    return reports
