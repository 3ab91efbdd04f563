"""The mislabel-detection experiment: flip a fraction of the labels, rank the training set by
every suspect signal, combination and baseline, and measure how many flips each ranking finds
(metrics.detection_summary), in a regular and a memorising (long, no weight decay) regime."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..config import recipe
from ..progress import Progress, silent
from .metrics import BUDGETS, detection_summary
from .reports import write_report

REGIMES = {  # name -> recipe overrides; memorising = long training, no weight decay
    "regular": {},
    "memorising": {"weight_decay": 0.0},
}
MEMORISING_EPOCHS = {"digits": 200, "mnist": 40, "fashion_mnist": 40}
BASE = ["loss", "margin", "self_influence", "identity_self_influence",
        "checkpoint_self_influence", "checkpoint_loss", "cv_loss", "cv2_loss", "self_confidence",
        "aum", "forgetting", "dynamics_loss"]
# cv_self_influence (out-of-sample EK-FAC self-influence) is available but left out: 0.58-0.60 of
# flips at 10% in both memorising runs (digits, mnist), below every combination, and 5 more fits.
COMBINATIONS = [
    "self_influence+margin", "classnorm:self_influence", "classnorm:checkpoint_self_influence",
    "cv_loss+self_influence", "cv_loss+checkpoint_self_influence",
    "cv_loss+classnorm:checkpoint_self_influence", "cv_loss+checkpoint_loss",
    "classnorm:cv_loss",
    "cv_loss+classnorm:cv_loss", "cv_loss+checkpoint_loss+checkpoint_self_influence",
    "loss+aum", "loss+dynamics_loss", "aum+cv_loss", "dynamics_loss+cv_loss",
    "classnorm:aum", "classnorm:dynamics_loss", "loss+classnorm:loss",
    "dynamics_loss+self_influence", "loss+aum+cv_loss",
    "checkpoint_loss+dynamics_loss", "checkpoint_loss+aum", "loss+checkpoint_loss",
    "classnorm:checkpoint_loss", "cv2_loss+checkpoint_loss", "cv2_loss+dynamics_loss",
    "cv2_loss+checkpoint_loss+dynamics_loss",
]
EVIDENCE_SAMPLE = 200  # flipped examples the index-evidence suggestion rules are measured on


def mislabel_config(dataset: str, model: str, noise: float, regime: str,
                    subset: float = 1.0, epochs: int | None = None, kind: str = "uniform",
                    noise_seed: int = 0):
    """The recipe of one mislabel run: `noise` of the labels flipped by noise `kind`
    (data/noise.py) with `noise_seed`, the regime's overrides (memorising: MEMORISING_EPOCHS
    unless `epochs`), on a seeded `subset` fraction if < 1."""
    over = dict(REGIMES[regime], noise=noise, noise_kind=kind, noise_seed=noise_seed)
    if regime == "memorising":
        over["epochs"] = epochs or MEMORISING_EPOCHS.get(dataset, 40)
    elif epochs:
        over["epochs"] = epochs
    if subset < 1.0:
        over.update(subset_seed=0, subset_fraction=subset)
    return recipe(dataset, model, **over)


def run_mislabel(cfg, data_root: str | None = None, kronfluence: bool = True,
                 snapshots: int = 5, folds: int = 5, progress: Progress = silent) -> dict:
    """Every base signal, combination and baseline on one noisy problem: detection curves,
    AUROC and AUPRC, with how many flips the model fitted."""
    from ..audit.signals import combine
    from ..audit.suspects import DEFAULT_SIGNAL, base_signals, cross_validated_probs, training_set
    from ..data.registry import load_problem
    from ..data.training import predict_logits
    from .baselines import cleanlab_scores, kronfluence_scores

    start = time.perf_counter()
    problem = load_problem(cfg, data_root, progress=progress)
    data, flipped, _ = training_set(problem)
    fitted = predict_logits(problem.model, data).argmax(1) == data.labels
    base = base_signals(problem, BASE, snapshots, folds, progress)
    rankings = dict(base)
    for expr in COMBINATIONS:
        rankings[expr] = combine(expr, base, data.labels)
    oos = cross_validated_probs(problem, folds)
    clean, flagged = cleanlab_scores(data.labels, oos)
    rankings["cleanlab"] = clean
    if kronfluence:
        rankings["kronfluence_self_influence"] = kronfluence_scores(problem.model, data)
    suggestion = suggestion_accuracy(problem, data, flipped, oos, progress)
    return with_fit_gate({
        "kind": "mislabel", "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "n_train": len(data), "n_flipped": int(flipped.sum()),
        "flips_fitted": float(fitted[flipped].float().mean()),
        "clean_fitted": float(fitted[~flipped].float().mean()),
        "test_accuracy": problem.meta.get("test_accuracy"), "cleanlab_flagged": flagged,
        "default_signal": DEFAULT_SIGNAL, "seconds": round(time.perf_counter() - start, 1),
        "rankings": {k: detection_summary(v, flipped) for k, v in rankings.items()},
        "suggestion": suggestion,
        "_curves": {k: _curve(v, flipped) for k, v in rankings.items()},
    })


def run_gap(res: dict) -> float:
    """A run's memorisation gap (audit.suspects.memorisation_gap) from its own numbers: the
    accuracy on its given training labels (flips and clean examples the model fitted, weighted
    by their counts) minus its test accuracy."""
    flips = res["n_flipped"] / res["n_train"]
    train = (1 - flips) * res["clean_fitted"] + flips * res["flips_fitted"]
    return float(train - res["test_accuracy"])


def with_fit_gate(res: dict) -> dict:
    """`res` with the fit gate's ranking (DEFAULT_SIGNAL) and suggestion rule (APP_RULE): the
    one of its two signals (audit.signals.gate_choice) and rules (audit.suggest.gate_rule) that
    the gate picks for this run's memorisation gap. Added to a kept run when it is summarised
    too, so runs made before the gate existed count with it. A result without the numbers or
    the two signals is returned as it is."""
    from ..audit.signals import FIT_GATE, FITTING_SIGNAL, MEMORISING_SIGNAL, gate_choice
    from ..audit.suggest import gate_rule

    needs = ("n_train", "n_flipped", "clean_fitted", "flips_fitted", "test_accuracy")
    if any(res.get(k) is None for k in needs) or not (
            {FITTING_SIGNAL, MEMORISING_SIGNAL} <= set(res["rankings"])):
        return res  # not a full run: nothing to gate
    gap = run_gap(res)
    chosen = gate_choice(gap)
    res["rankings"][FIT_GATE] = res["rankings"][chosen]
    if "_curves" in res:
        res["_curves"][FIT_GATE] = res["_curves"][chosen]
    res["fit_gate"] = {"gap": gap, "signal": chosen}
    rule = gate_rule(gap)
    if rule in res.get("suggestion", {}):
        res["suggestion"][FIT_GATE] = res["suggestion"][rule]
        res["fit_gate"]["rule"] = rule
    return res


def suggestion_accuracy(problem, data, flipped: torch.Tensor, oos: torch.Tensor,
                        progress: Progress = silent) -> dict:
    """Per suggestion rule (audit.suggest), the fraction of flipped examples whose suggested
    label is their clean label; the index-evidence rules on a seeded sample of
    EVIDENCE_SAMPLE flips (n says how many)."""
    from ..attribution.index import load_index
    from ..attribution.precompute import precompute
    from ..audit.suggest import RULES, average_probs, best_other, class_scores, class_support
    from ..audit.suspects import (
        DYNAMICS_POINTS,
        cross_validated_probs,
        training_dynamics,
        trajectory,
    )
    from ..data.datasets import subset
    from ..data.training import predict_logits

    idx = torch.nonzero(flipped)[:, 0]
    if len(idx) == 0:
        return {}
    given, clean = data.labels[idx].numpy(), data.original_labels[idx].numpy()
    final = predict_logits(problem.model, data)[idx].softmax(1).double()
    dyn = training_dynamics(problem, DYNAMICS_POINTS, progress).mean_probs[idx]
    sub = subset(data, idx)
    snaps = trajectory(problem, progress=progress)  # checkpoint_loss's (cached)
    ckpt = sum(predict_logits(m, sub).softmax(1).double() for m in snaps) / len(snaps)
    cv = oos[idx].double()
    cv2 = cross_validated_probs(problem, 2, progress)[idx].double()
    sources = {"model": final, "dynamics": dyn, "checkpoints": ckpt, "cleanlab": cv,
               "cv2": cv2}
    probs = {rule: average_probs(rule, sources) for rule in RULES}
    out = {k: {"accuracy": float((best_other(p, given) == clean).mean()), "n": len(idx)}
           for k, p in probs.items()}
    if problem.config.subset_seed < 0:  # the index covers problem.train, = data
        index = load_index(precompute(problem, progress=progress), problem.model)
        gen = torch.Generator().manual_seed(0)
        sample = idx[torch.randperm(len(idx), generator=gen)[:EVIDENCE_SAMPLE]]
        hits = {"evidence": [], "evidence_normalised": []}
        for i in sample.tolist():
            scores, label = class_scores(index, data, i), int(data.labels[i])
            for rule, norm in (("evidence", False), ("evidence_normalised", True)):
                support = class_support(scores, normalise=norm)
                hits[rule].append(best_other(support[None], [label])[0]
                                  == int(data.original_labels[i]))
        out.update({k: {"accuracy": float(np.mean(v)), "n": len(v)} for k, v in hits.items()})
    return out


def _curve(suspect: torch.Tensor, flipped: torch.Tensor) -> list[float]:
    order = np.argsort(-np.asarray(suspect, float), kind="stable")
    found = np.cumsum(np.asarray(flipped)[order]) / max(int(flipped.sum()), 1)
    grid = np.linspace(0, len(order), 101).astype(int)
    return [0.0] + [float(found[max(g, 1) - 1]) for g in grid[1:]]


def mislabel_report(out: Path, result: dict, name: str) -> str:
    """Write run_mislabel's result as report `name` in `out`; returns its Markdown table."""
    md = mislabel_markdown(result)
    write_report(out, name, result, md, {"curve": mislabel_figure(result)})
    return md


def mislabel_markdown(result: dict) -> str:
    cols = [f"top {float(b):.0%}" for b in BUDGETS]
    head = f"| ranking | {' | '.join(cols)} | AUROC | AUPRC |"
    c = result["config"]
    title = (
        f"Mislabel detection: {c['dataset']}/{c['model']}, "
        f"noise {c['noise']}, epochs {c['epochs']}, weight decay "
        f"{c['weight_decay']}, n = {result['n_train']} "
        f"({result['n_flipped']} flipped; the model fits {result['flips_fitted']:.0%} of flips, "
        f"test accuracy {result['test_accuracy']:.3f}; "
        f"cleanlab flags {result['cleanlab_flagged']})."
        f" Default suspect ranking: `{result['default_signal']}`.")
    lines = [
        title, "", head, "|" + "---|" * (len(cols) + 3)]
    ordered = sorted(result["rankings"].items(), key=lambda kv: -kv[1]["curve"]["0.20"])
    for name, r in ordered:
        vals = " | ".join(f"{v:.3f}" for v in r["curve"].values())
        lines.append(f"| {name} | {vals} | {r['auroc']:.3f} | {r['auprc']:.3f} |")
    return "\n".join(lines) + "\n"


def mislabel_figure(result: dict):
    import plotly.graph_objects as go

    fig, c = go.Figure(), result["config"]
    x = np.linspace(0, 1, 101).tolist()
    for name, ys in result["_curves"].items():
        fig.add_trace(go.Scatter(x=x, y=ys, name=name, mode="lines"))
    fig.update_layout(xaxis_title="fraction of training set inspected",
                      yaxis_title="fraction of flipped labels found",
                      title=f"Mislabel detection ({c['dataset']}, "
                            f"{c['epochs']} epochs, wd {c['weight_decay']})")
    return fig
