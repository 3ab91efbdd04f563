"""The LDS experiment: retrain on seeded alpha-subsets, score every estimator on the full
model, and report the Spearman correlation between predicted and actual query margins
(metrics.lds), with the reliability of the targets and the ceiling it sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import recipe
from ..progress import Progress
from .metrics import lds, spearman_rows
from .reports import write_report


def subset_outputs(cfg: object, queries: torch.Tensor, subsets: int, alpha: float,
                   data_root: str | None = None, max_new: int | None = None,
                   progress: object = None, seeds: int = 1, vary: str = "init"
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train (or load) cfg's recipe on `subsets` seeded alpha-subsets, `seeds` training seeds
    each (vary="init": seed cfg.seed + s, init and batch order; "order": the same init, batch
    order seeded cfg.seed + s; s = 0 is cfg itself either way); returns (masks (M', N), query
    margins averaged over the seeds (Q, M'), per-seed margins (seeds, Q, M')) for the M' <= M
    subsets whose every seed is available after training at most `max_new` new models (None:
    all). Checkpoints are cached by config, so reruns resume."""
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
    per_seed = (np.array(outputs).transpose(1, 2, 0) if outputs
                else np.zeros((seeds, len(queries), 0)))
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
    scores.update(_baseline_scores(model, train, test, q_idx, kronfluence, trak))
    if "index" in methods:
        scores.update(_index_scores(load_problem(cfg, data_root), qx, qy))
    if ensemble > 1:
        scores.update(_ensemble_scores(cfg, data_root, train, qx, qy, scores, ensemble))
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


def _baseline_scores(model: torch.nn.Module, train: object, test: object, q_idx: torch.Tensor,
                     kronfluence: bool | tuple[str, ...], trak: bool) -> dict[str, torch.Tensor]:
    """(Q, N) scores of the baselines run beside ours: Kronfluence's variants and, on models
    of at most 50,000 parameters, TRAK-style projection."""
    import dataclasses

    qx, qy = test.tensor(q_idx), test.labels[q_idx]
    scores = {}
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
    return scores


def _ensemble_scores(cfg: object, data_root: str | None, train: object, qx: torch.Tensor,
                     qy: torch.Tensor, scores: dict[str, torch.Tensor], ensemble: int
                     ) -> dict[str, torch.Tensor]:
    """<name>_ensemble<k>: EK-FAC's and the index's scores (those already in `scores`) averaged
    with the same estimator's on models trained with seeds 1 .. k-1."""
    import dataclasses

    from ..data.registry import load_problem

    others = [load_problem(dataclasses.replace(cfg, seed=s), data_root)
              for s in range(1, ensemble)]
    rescore = {"ekfac": lambda p: estimator_scores(p.model, train, qx, qy, ("ekfac",)),
               "index": lambda p: _index_scores(p, qx, qy)}
    out = {}
    for name in [m for m in rescore if m in scores]:
        runs = [scores[name]] + [rescore[name](p)[name] for p in others]
        out[f"{name}_ensemble{ensemble}"] = sum(runs) / ensemble
    return out


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


def lds_markdown(result: dict) -> str:
    c = result["config"]
    title = (f"LDS: {c['dataset']}/{c['model']} ({c['epochs']} epochs), "
             f"{result['subsets_used']} of {result['subsets_requested']} subsets retrained, "
             f"alpha {result['alpha']}, {result['queries']} queries, margin measurement.")
    if gt := result.get("ground_truth"):
        what = ("batch-order seeds, one init" if gt.get("seeds_vary") == "order"
                else "training seeds (init and batch order)")
        title += (f" Targets: mean of {gt['seeds']} {what} per subset; seed-to-seed "
                  f"Spearman {gt['seed_to_seed_spearman']:.3f}, so a perfect attribution "
                  f"reaches at most LDS {gt['lds_ceiling']:.3f}.")
    lines = [title, "", "| estimator | LDS |", "|---|---|"]
    for name, v in sorted(result["lds"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {v:.3f} |")
    return "\n".join(lines) + "\n"


def lds_figure(result: dict):
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, vals in result["_per_query"].items():
        fig.add_trace(go.Box(y=vals, name=name, boxmean=True))
    fig.update_layout(yaxis_title="per-query Spearman (LDS)", title="LDS per estimator")
    return fig


def run_lds_report(cfg, subsets, alpha, queries, methods, ensemble, kron, data_root, max_new,
                   progress: Progress, out: Path | None, seeds: int = 1,
                   vary: str = "init") -> dict:
    """run_lds, then (with `out`) its report lds_<dataset>_<model>[_<epochs>ep][_<k>seeds|
    _<k>orders] in that folder."""
    res = run_lds(cfg, subsets, alpha, queries, methods, ensemble, kron, True, data_root,
                  max_new, progress, seeds, vary)
    if out is not None:
        default = cfg.epochs == recipe(cfg.dataset, cfg.model).epochs
        name = (f"lds_{cfg.dataset}_{cfg.model}" + ("" if default else f"_{cfg.epochs}ep")
                + ("" if seeds == 1 else f"_{seeds}{'seeds' if vary == 'init' else 'orders'}"))
        write_report(out, name, res, lds_markdown(res), {"per_query": lds_figure(res)})
    return res
