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


# ---- the LDS experiment ------------------------------------------------------------------------


def subset_outputs(cfg: object, queries: torch.Tensor, subsets: int, alpha: float,
                   data_root: str | None = None, max_new: int | None = None,
                   progress: object = None, seeds: int = 1, vary: str = "init"
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train (or load) cfg's recipe on `subsets` seeded alpha-subsets, `seeds` training seeds
    each (vary="init": seed cfg.seed + s, init and batch order; "order": the same init, batch
    order seeded cfg.seed + s; s = 0 is cfg itself either way); returns (masks (M', N), query
    margins averaged over the seeds (Q, M'), per-seed margins (seeds, Q, M')) for the M' <= M
    subsets whose every seed is available after training at most `max_new` new models (None: all). Checkpoints are
    cached by config, so reruns resume."""
    import dataclasses

    from ..curvature.task import margin
    from ..data.datasets import subset_mask
    from ..data.registry import load_dataset
    from ..data.training import checkpoint_dir, predict_logits, train_or_load

    train, test = load_dataset(cfg.dataset, data_root)
    masks, outputs, new = [], [], 0
    for j in range(subsets):
        base = dataclasses.replace(cfg, subset_seed=j, subset_fraction=alpha)
        cfgs = [base] + [dataclasses.replace(base, **({"seed": cfg.seed + s} if vary == "init"
                                                      else {"order_seed": cfg.seed + s}))
                         for s in range(1, seeds)]
        missing = sum(not (checkpoint_dir(c) / "model.pt").is_file() for c in cfgs)
        if missing and max_new is not None and new + missing > max_new:
            continue
        new += missing
        per_seed = []
        for c in cfgs:
            model, _ = train_or_load(c, train, test)
            logits = predict_logits(model, test).index_select(0, queries)
            per_seed.append(margin(logits, test.labels[queries]).numpy())
        outputs.append(per_seed)
        masks.append(subset_mask(len(train), alpha, j).numpy())
        if progress is not None:
            progress(j + 1, subsets, f"LDS retrainings ({new} new)")
    per_seed = np.array(outputs).transpose(1, 2, 0) if outputs else np.zeros((seeds, len(queries), 0))
    return np.array(masks), per_seed.mean(0), per_seed


def ground_truth_reliability(per_seed: np.ndarray, vary: str = "init") -> dict:
    """How reproducible the LDS targets are: per query, the Spearman correlation across subsets
    between the margins of two training seeds (r, mean over queries), and the LDS a perfect
    attribution could reach against the mean of k seeds, sqrt(k r / (1 + (k - 1) r)) (Spearman-
    Brown): a ceiling set by training noise, not by the estimator."""
    k = per_seed.shape[0]
    r = float(np.nanmean(spearman_rows(per_seed[0], per_seed[1])))
    return {"seeds": k, "seeds_vary": vary, "seed_to_seed_spearman": r,
            "lds_ceiling": lds_ceiling(r, k)}


def estimator_scores(model: torch.nn.Module, train: object, query_x: torch.Tensor,
                     query_y: torch.Tensor, methods: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """(Q, N) margin-measurement scores of each of our estimators on one model; an estimator
    that cannot run here (exact beyond its size limit, LiSSA diverging) is skipped."""
    from ..attribution.scores import pairwise_influence
    from ..config import ExactConfig
    from ..curvature import LissaDivergedError, fit_curvature
    from ..curvature.gradients import TrackedModel
    from ..curvature.task import ClassificationTask

    tracked, task = TrackedModel(model), ClassificationTask("margin")
    out = {}
    for method in methods:
        if method == "index":  # scored from the precomputed index in run_lds
            continue
        if method == "exact" and tracked.num_params > ExactConfig().max_params:
            continue
        try:
            curv = fit_curvature(method, tracked, task, train)
        except LissaDivergedError:
            continue
        out[method] = pairwise_influence(curv, task, query_x, query_y, train).double()
    return out


def _index_scores(problem: object, query_x: torch.Tensor, query_y: torch.Tensor
                  ) -> dict[str, torch.Tensor]:
    """{'index': (Q, N)} from the precomputed attribution index (margin measurement), or {}
    when this checkout has no index module."""
    try:
        from ..attribution.index import load_index, query_vector
        from ..attribution.precompute import precompute
        from ..config import IndexConfig
    except ImportError:
        return {}
    folder = precompute(problem, index=IndexConfig(measurement="margin"))
    index = load_index(folder, problem.model)
    rows = torch.stack([query_vector(index, x, y) for x, y in zip(query_x, query_y)])
    return {"index": index.projection.scores(rows, index.vectors).double()}  # 16 at a time


KRONFLUENCE_VARIANTS = {  # --kronfluence-variants name -> (report key, strategy, heuristic damping)
    "ekfac": ("kronfluence_ekfac", "ekfac", True),
    "ekfac_default": ("kronfluence_ekfac_default_damping", "ekfac", False),
    "kfac": ("kronfluence_kfac", "kfac", True),
}


def run_lds(cfg: object, subsets: int = 100, alpha: float = 0.5, queries: int = 2000,
            methods: tuple[str, ...] = ("exact", "ekfac", "kfac", "identity"),
            ensemble: int = 1, kronfluence: bool | tuple[str, ...] = True, trak: bool = True,
            data_root: str | None = None, max_new: int | None = None,
            progress: object = None, seeds: int = 1, vary: str = "init") -> dict:
    """LDS of every estimator (ours, Kronfluence's EK-FAC/K-FAC, TRAK-style, random) on cfg's
    model, against `subsets` retrainings on alpha-subsets. ensemble > 1 also scores the mean of
    EK-FAC (and index) attributions over that many independently seeded full-data models.
    kronfluence: True (every variant), False, or the KRONFLUENCE_VARIANTS names to run.
    seeds > 1: each subset is trained with that many seeds and the target is their mean margin;
    the report then also gives the targets' seed-to-seed reliability and the LDS ceiling it
    implies. vary: what the seeds change, "init" (init and batch order) or "order" (batch order
    only: every subset model then starts from the same init, as the attributed model does)."""
    import dataclasses

    from ..data.registry import load_dataset, load_problem

    train, test = load_dataset(cfg.dataset, data_root)
    gen = torch.Generator().manual_seed(0)
    q_idx = torch.randperm(len(test), generator=gen)[: min(queries, len(test))]
    masks, outputs, per_seed = subset_outputs(cfg, q_idx, subsets, alpha, data_root, max_new,
                                              progress, seeds, vary)
    qx, qy = test.tensor(q_idx), test.labels[q_idx]
    model = load_problem(cfg, data_root).model
    scores = estimator_scores(model, train, qx, qy, methods)
    if kronfluence:
        from .baselines import kronfluence_scores

        query = dataclasses.replace(test, labels=qy, pixels=test.pixels[q_idx],
                                    original_labels=qy)
        picked = KRONFLUENCE_VARIANTS if kronfluence is True else kronfluence
        for variant in picked:
            name, strat, heur = KRONFLUENCE_VARIANTS[variant]
            scores[name] = kronfluence_scores(model, train, query, "margin", strat, heur)
    if trak and sum(p.numel() for p in model.parameters()) <= 50_000:
        from .baselines import trak_scores

        scores["trak_projected"] = trak_scores(model, train, qx, qy)
    if "index" in methods:
        scores.update(_index_scores(load_problem(cfg, data_root), qx, qy))
    if ensemble > 1:  # the same estimator on models trained with seeds 1.. k-1, averaged
        others = [load_problem(dataclasses.replace(cfg, seed=s), data_root)
                  for s in range(1, ensemble)]
        rescore = {"ekfac": lambda p: estimator_scores(p.model, train, qx, qy, ("ekfac",)),
                   "index": lambda p: _index_scores(p, qx, qy)}
        for name in [m for m in rescore if m in scores]:
            runs = [scores[name]] + [rescore[name](p)[name] for p in others]
            scores[f"{name}_ensemble{ensemble}"] = sum(runs) / ensemble
    scores["random"] = torch.randn(len(q_idx), len(train), generator=gen).double()
    per_query = {k: lds(v, masks, outputs)[1] for k, v in scores.items()}
    result = {
        "kind": "lds", "config": dataclasses.asdict(cfg), "subsets_requested": subsets,
        "subsets_used": len(masks), "alpha": alpha, "queries": len(q_idx),
        "measurement": "margin", "seeds_per_subset": seeds,
        **({"ground_truth": ground_truth_reliability(per_seed, vary)} if seeds > 1 else {}),
        "lds": {k: float(np.nanmean(v)) for k, v in per_query.items()},
        "_per_query": {k: [float(x) for x in v] for k, v in per_query.items()},
    }
    if seeds > 1:
        result["derived"] = ceiling_figures(result)
    return result


def lds_ceiling(r: float, k: int) -> float:
    """The LDS a perfect attribution reaches against the mean of k seeds' targets whose
    seed-to-seed Spearman is r: sqrt(k r / (1 + (k - 1) r)) (Spearman-Brown), 0 for r <= 0."""
    return float(np.sqrt(k * r / (1 + (k - 1) * r))) if r > 0 else 0.0


def ceiling_figures(result: dict) -> dict:
    """Figures computed from an LDS report with a ground-truth reliability, stored with it: the
    ceiling against one-seed targets and each estimator's LDS as a fraction of the ceiling of
    the targets it was measured against."""
    gt = result["ground_truth"]
    ceiling = gt["lds_ceiling"]
    return {"lds_ceiling_one_seed": lds_ceiling(gt["seed_to_seed_spearman"], 1),
            "share_of_ceiling": {k: v / ceiling for k, v in result["lds"].items()
                                 if ceiling > 0}}
