"""`python -m influence_core evaluate {mislabel,lds,unlearning,quick}`: the evaluation harness.

Each run writes <out>/<name>.json, .md and plotly figures (evaluation.reports.write_report);
every retraining is cached by config hash under $INFLUENCE_AUDIT_HOME, so an interrupted run
resumes. The experiments themselves are in influence_core/evaluation/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import artifacts_root, recipe
from ..data.noise import NOISE_KINDS
from ..progress import tqdm_progress
from .args import add_data_args


# long: one flat list of every experiment's options, grouped as `-h` shows them
def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment",
                   choices=["mislabel", "suspects", "lds", "unlearning", "quick", "rounds"])
    add_data_args(p, described=False)
    p.add_argument("--out", default=None,
                   help="report folder (default $INFLUENCE_AUDIT_HOME/reports)")
    p.add_argument("--quick", action="store_true", help="digits settings that finish in minutes")
    p.add_argument("--no-kronfluence", action="store_true")
    g = p.add_argument_group("mislabel")
    g.add_argument("--noise", type=float, default=0.1)
    g.add_argument("--noise-kind", choices=NOISE_KINDS, default="uniform",
                   help="which labels are flipped and to what (README, 'Label noise')")
    g.add_argument("--noise-seed", type=int, default=0)
    g = p.add_argument_group("suspects (choose on dev, report on test)")
    g.add_argument("--split", choices=["dev", "test"], default="dev")
    g.add_argument("--noise-kinds", default=",".join(NOISE_KINDS))
    g.add_argument("--noise-rates", default="0.1,0.2")
    g.add_argument("--regimes", default="regular,memorising")
    g.add_argument("--available-only", action="store_true",
                   help="run nothing new: summarise the runs already cached (a partial report)")
    g.add_argument("--regime", choices=["regular", "memorising", "both"], default="both")
    g.add_argument("--subset", type=float, default=1.0, help="train on this seeded fraction")
    g.add_argument("--epochs", type=int, default=None,
                   help="training epochs (mislabel; lds: of the full model and every subset model)")
    g.add_argument("--snapshots", type=int, default=5, help="checkpoints for summed signals")
    g.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    g = p.add_argument_group("rounds (a simulated annotator over cleaning rounds)")
    g.add_argument("--budget", type=float, default=0.05, help="decisions per round / N")
    g.add_argument("--rounds", type=int, default=2, help="review-and-retrain rounds")
    g.add_argument("--seeds", default="0,1", help="noise draws and training seeds")
    g.add_argument("--queues", default="app,cleanlab,random,perfect",
                   help="queues to follow (app: the Review page's; cleanlab; random; perfect: "
                        "every decision on a flip, the most any queue can repair)")
    g.add_argument("--rerun-seeds", nargs="?", const="all", default=None, metavar="SEEDS",
                   help="run seeds again even when the report in --out already holds them for "
                        "the same setting and queues: every seed, or a comma-separated list")
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


def _mislabel(args: argparse.Namespace, out: Path, progress, kron: bool) -> int:
    from ..evaluation.mislabel import mislabel_config, mislabel_report, run_mislabel

    regimes = ["regular", "memorising"] if args.regime == "both" else [args.regime]
    for regime in regimes:
        cfg = mislabel_config(args.dataset, args.model, args.noise, regime, args.subset,
                              args.epochs, args.noise_kind, args.noise_seed)
        res = run_mislabel(cfg, args.data_root, kron, args.snapshots, args.folds, progress)
        kind = "" if args.noise_kind == "uniform" else f"_{args.noise_kind}"
        print(mislabel_report(out, res, f"mislabel_{args.dataset}_{args.model}_{regime}{kind}"))
    return 0


def _suspects(args: argparse.Namespace, out: Path, progress, kron: bool) -> int:
    from ..audit.suggest import APP_RULE
    from ..audit.suspects import DEFAULT_SIGNAL
    from ..evaluation.suspect_selection import run_all, selection_report, settings

    kinds = [k for k in args.noise_kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(NOISE_KINDS))
    if unknown:
        raise SystemExit(f"unknown --noise-kinds {unknown}; choose from {list(NOISE_KINDS)}")
    rates = [float(r) for r in args.noise_rates.split(",") if r]
    regimes = [r for r in args.regimes.split(",") if r]
    runs = run_all(args.split, kinds, rates, regimes, out / "suspect-runs", args.data_root,
                   kron, args.epochs, progress, args.available_only)
    planned = len(settings(args.split, kinds, rates, regimes))
    print(selection_report(out, args.split, runs, DEFAULT_SIGNAL, planned, APP_RULE))
    return 0


def _lds(args: argparse.Namespace, out: Path, progress, kron: bool) -> int:
    from ..evaluation.lds import KRONFLUENCE_VARIANTS, lds_markdown, run_lds_report

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


def _rounds(args: argparse.Namespace, out: Path, progress) -> int:
    import os
    import sys

    from ..evaluation.cleaning_rounds import QUEUES, run_rounds_report
    from ..evaluation.rounds_report import rounds_markdown

    seeds = [int(s) for s in args.seeds.split(",") if s]
    listed = [s for s in (args.rerun_seeds or "").split(",") if s]
    if args.rerun_seeds != "all" and not all(s.strip().lstrip("-").isdigit() for s in listed):
        raise ValueError(f"--rerun-seeds takes seeds separated by commas, not {args.rerun_seeds!r}")
    rerun = tuple(seeds) if args.rerun_seeds == "all" else tuple(int(s) for s in listed)
    queues = tuple(q for q in args.queues.split(",") if q)
    if not queues or set(queues) - set(QUEUES):
        raise ValueError(f"--queues takes a comma-separated list from {', '.join(QUEUES)}")
    if not 0 < args.budget < 1 or args.rounds < 1 or not seeds:
        raise ValueError("rounds needs 0 < --budget < 1, --rounds >= 1 and at least one seed")
    # as a reader would type it from here: absolute paths (the data root) made relative
    command = "python -m influence_core " + " ".join(
        os.path.relpath(a) if os.path.isabs(a) else a for a in sys.argv[1:])
    path, result = run_rounds_report(args.dataset, args.model, args.noise, args.noise_kind,
                                     args.budget, args.rounds, seeds, out, args.data_root,
                                     progress, command, queues, rerun=rerun)
    print(rounds_markdown(result))
    print(f"report: {path}")
    return 0


def _cmd(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else artifacts_root() / "reports"
    progress, kron = tqdm_progress(), not args.no_kronfluence
    if args.quick or args.experiment == "quick":
        from ..evaluation.quick import run_quick

        print(json.dumps(run_quick(out, args.data_root, progress)["pinned"], indent=1))
        return 0
    if args.experiment == "unlearning":
        from ..evaluation.unlearning_report import run_unlearning_report

        print(run_unlearning_report(args.dataset, args.model, out, args.data_root, progress))
        return 0
    if args.experiment == "mislabel":
        return _mislabel(args, out, progress, kron)
    if args.experiment == "rounds":
        return _rounds(args, out, progress)
    if args.experiment == "suspects":
        return _suspects(args, out, progress, kron)
    return _lds(args, out, progress, kron)


COMMANDS = {"evaluate": (_cmd, _add_args,
                         "evaluate: LDS, mislabel-detection and cleaning-round reports "
                         "(JSON, Markdown, plotly)")}
