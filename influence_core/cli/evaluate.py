"""`python -m influence_core evaluate {mislabel,lds}`: the evaluation harness.

Each run writes <out>/<name>.json, .md and plotly figures (see evaluation.write_report); every
retraining is cached by config hash under $INFLUENCE_AUDIT_HOME, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..config import artifacts_root, recipe
from ..evaluation.metrics import BUDGETS, KRONFLUENCE_VARIANTS, detection_summary, write_report
from ..progress import Progress, silent, tqdm_progress

REGIMES = {  # name -> recipe overrides; memorising = long training, no weight decay
    "regular": {},
    "memorising": {"weight_decay": 0.0},
}
MEMORISING_EPOCHS = {"digits": 200, "mnist": 40, "fashion_mnist": 40}
BASE = ["loss", "margin", "self_influence", "identity_self_influence",
        "checkpoint_self_influence", "checkpoint_loss", "cv_loss"]
# cv_self_influence (out-of-sample EK-FAC self-influence) is available but left out: 0.58-0.60 of
# flips at 10% in both memorising runs (digits, mnist), below every combination, and 5 more fits.
COMBINATIONS = [
    "self_influence+margin", "classnorm:self_influence", "classnorm:checkpoint_self_influence",
    "cv_loss+self_influence", "cv_loss+checkpoint_self_influence",
    "cv_loss+classnorm:checkpoint_self_influence", "cv_loss+checkpoint_loss",
    "classnorm:cv_loss",
    "cv_loss+classnorm:cv_loss", "cv_loss+checkpoint_loss+checkpoint_self_influence",
]


def mislabel_config(dataset: str, model: str, noise: float, regime: str,
                    subset: float = 1.0, epochs: int | None = None):
    over = dict(REGIMES[regime], noise=noise)
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
    from ..audit.suspects import (
        DEFAULT_SIGNAL,
        base_signals,
        combine,
        cross_validated_probs,
        training_set,
    )
    from ..data.registry import load_problem
    from ..data.training import predict_logits
    from ..evaluation.baselines import cleanlab_scores, kronfluence_scores

    start = time.perf_counter()
    problem = load_problem(cfg, data_root, progress=progress)
    data, flipped, _ = training_set(problem)
    fitted = predict_logits(problem.model, data).argmax(1) == data.labels
    base = base_signals(problem, BASE, snapshots, folds, progress)
    rankings = dict(base)
    for expr in COMBINATIONS + [DEFAULT_SIGNAL]:
        rankings[expr] = combine(expr, base, data.labels)
    clean, flagged = cleanlab_scores(data.labels, cross_validated_probs(problem, folds))
    rankings["cleanlab"] = clean
    if kronfluence:
        rankings["kronfluence_self_influence"] = kronfluence_scores(problem.model, data)
    return {
        "kind": "mislabel", "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "n_train": len(data), "n_flipped": int(flipped.sum()),
        "flips_fitted": float(fitted[flipped].float().mean()),
        "clean_fitted": float(fitted[~flipped].float().mean()),
        "test_accuracy": problem.meta.get("test_accuracy"), "cleanlab_flagged": flagged,
        "default_signal": DEFAULT_SIGNAL, "seconds": round(time.perf_counter() - start, 1),
        "rankings": {k: detection_summary(v, flipped) for k, v in rankings.items()},
        "_curves": {k: _curve(v, flipped) for k, v in rankings.items()},
    }


def _curve(suspect: torch.Tensor, flipped: torch.Tensor) -> list[float]:
    order = np.argsort(-np.asarray(suspect, float), kind="stable")
    found = np.cumsum(np.asarray(flipped)[order]) / max(int(flipped.sum()), 1)
    grid = np.linspace(0, len(order), 101).astype(int)
    return [0.0] + [float(found[max(g, 1) - 1]) for g in grid[1:]]


def mislabel_markdown(result: dict) -> str:
    cols = [f"top {float(b):.0%}" for b in BUDGETS]
    head = f"| ranking | {' | '.join(cols)} | AUROC | AUPRC |"
    c = result["config"]
    title = (
        f"Mislabel detection: {c['dataset']}/{c['model']}, "
        f"noise {c['noise']}, epochs {c['epochs']}, weight decay "
        f"{c['weight_decay']}, n = {result['n_train']} "
        f"({result['n_flipped']} flipped; the model fits {result['flips_fitted']:.0%} of flips, "
        f"test accuracy {result['test_accuracy']:.3f}; cleanlab flags {result['cleanlab_flagged']})."
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


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", choices=["mislabel", "lds", "unlearning", "quick"])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="mlp")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default=None, help="report folder (default $INFLUENCE_AUDIT_HOME/reports)")
    p.add_argument("--quick", action="store_true", help="digits settings that finish in minutes")
    p.add_argument("--no-kronfluence", action="store_true")
    g = p.add_argument_group("mislabel")
    g.add_argument("--noise", type=float, default=0.1)
    g.add_argument("--regime", choices=["regular", "memorising", "both"], default="both")
    g.add_argument("--subset", type=float, default=1.0, help="train on this seeded fraction")
    g.add_argument("--epochs", type=int, default=None,
                   help="training epochs (mislabel; lds: of the full model and every subset model)")
    g.add_argument("--snapshots", type=int, default=5, help="checkpoints for summed signals")
    g.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    g = p.add_argument_group("lds")
    g.add_argument("--subsets", type=int, default=100)
    g.add_argument("--alpha", type=float, default=0.5)
    g.add_argument("--queries", type=int, default=2000)
    g.add_argument("--ensemble", type=int, default=1,
                   help="also average EK-FAC and index attributions over models of this many seeds")
    g.add_argument("--seeds-per-subset", type=int, default=1,
                   help="train each subset with this many seeds; the target is their mean margin "
                        "(>= 2 also reports the targets' reliability and the LDS ceiling)")
    g.add_argument("--vary", choices=["init", "order"], default="init",
                   help="what --seeds-per-subset changes: init and batch order, or batch order "
                        "only (the same init for every model)")
    g.add_argument("--max-new", type=int, default=None, help="train at most this many new subset "
                   "models now (resume later); LDS uses those available")
    g.add_argument("--kronfluence-variants", default="ekfac,ekfac_default,kfac",
                   help="Kronfluence runs in the same LDS run (ekfac, ekfac_default, kfac)")
    g.add_argument("--methods", default="exact,ekfac,kfac,lissa,identity,index")


QUICK = {"subsets": 20, "queries": 360, "methods": ("ekfac", "kfac", "identity"), "folds": 3,
         "snapshots": 3}


def run_quick(out: Path, data_root: str | None = None, progress: Progress = silent) -> dict:
    """digits/mlp in minutes: regular-regime mislabel detection (3 folds, 3 snapshots) and LDS
    on 20 subsets, without Kronfluence; the headline numbers go to result['pinned']."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models are dispatch-bound: 1 thread is ~5x faster on 2 cores
    try:
        return _quick(out, data_root, progress)
    finally:
        torch.set_num_threads(threads)


def _quick(out: Path, data_root: str | None, progress: Progress) -> dict:
    from ..audit.suspects import DEFAULT_SIGNAL

    mis = run_mislabel(mislabel_config("digits", "mlp", 0.1, "regular"), data_root, False,
                       QUICK["snapshots"], QUICK["folds"], progress)
    res = run_lds_report(recipe("digits", "mlp"), QUICK["subsets"], 0.5, QUICK["queries"],
                         QUICK["methods"], 1, False, data_root, None, progress, None)
    pinned = {f"lds_{k}": v for k, v in res["lds"].items() if k != "random"}
    for name in (DEFAULT_SIGNAL, "self_influence", "loss", "cleanlab"):
        r = mis["rankings"][name]
        pinned.update({f"{name}@10%": r["curve"]["0.10"], f"{name}@20%": r["curve"]["0.20"],
                       f"{name}_auroc": r["auroc"]})
    result = {"kind": "quick", "pinned": pinned, "mislabel": mis, "lds": res}
    md = "Quick digits/mlp\n\n" + mislabel_markdown(mis) + "\n" + lds_markdown(res)
    write_report(out, "quick_digits_mlp", result, md, {"curve": mislabel_figure(mis)})
    return result


def run_lds_report(cfg, subsets, alpha, queries, methods, ensemble, kron, data_root, max_new,
                   progress, out: Path | None, seeds: int = 1, vary: str = "init") -> dict:
    from ..evaluation.metrics import run_lds

    res = run_lds(cfg, subsets, alpha, queries, methods, ensemble, kron, True, data_root,
                  max_new, progress, seeds, vary)
    if out is not None:
        default = cfg.epochs == recipe(cfg.dataset, cfg.model).epochs
        name = (f"lds_{cfg.dataset}_{cfg.model}" + ("" if default else f"_{cfg.epochs}ep")
                + ("" if seeds == 1 else f"_{seeds}{'seeds' if vary == 'init' else 'orders'}"))
        write_report(out, name, res, lds_markdown(res),
                     {"per_query": lds_figure(res)})
    return res


def run_unlearning(dataset: str, model: str, out: Path, data_root: str | None,
                   progress: Progress) -> int:
    """The unlearning verification (influence_core.evaluation.unlearning, when present) as a report."""
    try:
        from ..config import VerifyConfig
        from ..evaluation.unlearning import markdown_table, verify_unlearning
    except ImportError:
        print("evaluate unlearning needs influence_core/verify.py, absent in this checkout")
        return 2
    import plotly.graph_objects as go

    res = verify_unlearning(VerifyConfig(dataset=dataset, model=model), data_root, progress)
    fig = go.Figure()
    for exp in ("remove", "relabel"):
        for name, row in res.get(exp, {}).get("sets", {}).items():
            kinds = [k for k, v in row.items() if isinstance(v, dict) and "kl" in v]
            fig.add_trace(go.Bar(name=f"{exp}: {name}", x=kinds, y=[row[k]["kl"] for k in kinds]))
    fig.update_layout(yaxis_title="KL(retrained || model)", yaxis_type="log", barmode="group")
    md = markdown_table(res)
    write_report(out, f"unlearning_{dataset}_{model}", res, md, {"kl": fig})
    print(md)
    return 0


def _cmd(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else artifacts_root() / "reports"
    progress, kron = tqdm_progress(), not args.no_kronfluence
    if args.quick or args.experiment == "quick":
        print(json.dumps(run_quick(out, args.data_root, progress)["pinned"], indent=1))
        return 0
    if args.experiment == "unlearning":
        return run_unlearning(args.dataset, args.model, out, args.data_root, progress)
    if args.experiment == "mislabel":
        regimes = ["regular", "memorising"] if args.regime == "both" else [args.regime]
        for regime in regimes:
            cfg = mislabel_config(args.dataset, args.model, args.noise, regime, args.subset,
                                  args.epochs)
            res = run_mislabel(cfg, args.data_root, kron, args.snapshots, args.folds, progress)
            md = mislabel_markdown(res)
            write_report(out, f"mislabel_{args.dataset}_{args.model}_{regime}", res, md,
                         {"curve": mislabel_figure(res)})
            print(md)
        return 0
    methods = tuple(m for m in args.methods.split(",") if m)
    if kron:
        kron = tuple(v for v in args.kronfluence_variants.split(",") if v)
        unknown = sorted(set(kron) - set(KRONFLUENCE_VARIANTS))
        if unknown:
            raise SystemExit(f"unknown --kronfluence-variants {unknown}; "
                             f"choose from {sorted(KRONFLUENCE_VARIANTS)}")
    over = {"epochs": args.epochs} if args.epochs else {}
    res = run_lds_report(recipe(args.dataset, args.model, **over), args.subsets, args.alpha,
                         args.queries, methods, args.ensemble, kron, args.data_root,
                         args.max_new, progress, out, args.seeds_per_subset, args.vary)
    print(lds_markdown(res))
    return 0


COMMAND = (_cmd, _add_args, "evaluate: LDS and mislabel-detection reports (JSON, Markdown, plotly)")
