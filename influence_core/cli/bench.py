"""`bench query | core | first-card | faults`: the attribution index's latency and quality, our
EK-FAC against Kronfluence's with every estimator's IHVP error, the time to the first Review card
with nothing cached, and every class of bad input against the real entry points (plus concurrent
reviewers on one decision log)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import artifacts_root
from ..progress import tqdm_progress
from .args import add_index_args, curvature_config, index_config, problem_from_args


def _bench_query(args: argparse.Namespace) -> int:
    from ..evaluation.bench_query import bench_query

    problem = problem_from_args(args)
    report = bench_query(problem, index_config(args), args.queries, not args.skip_quality,
                         args.width, curvature_config(args))
    out = Path(args.out) if args.out else (
        artifacts_root() / "bench" / f"query-{problem.config.dataset}-{problem.config.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    headline = ("latency", "index_dim", "index_file_bytes")
    print(json.dumps({k: report[k] for k in headline}, indent=1))
    for m, q in report.get("quality", {}).items():
        print(f"eigen width {m} (+ {report['factor_dim']} factor columns): Spearman mean "
              f"{q['spearman_mean']:.3f} min {q['spearman_min']:.3f}, "
              f"product {q['product_median_ms']:.1f} ms")
    print(f"report: {out}")
    return 0


def _bench_core(args: argparse.Namespace) -> int:
    from ..evaluation.bench_core import bench_core

    bench_core(args.data_root, args.subset, args.bench_batch_size, args.threads, args.out,
               tqdm_progress())
    return 0


def _bench_first_card(args: argparse.Namespace) -> int:
    from ..evaluation.bench_first_card import (
        bench_first_card,
        default_home,
        first_card_markdown,
    )

    home = Path(args.home) if args.home else default_home(args.dataset, args.model)
    out = Path(args.out) if args.out else home.with_suffix(".json")
    report = bench_first_card(args.dataset, args.model, args.data_root, args.ranking, home,
                              tqdm_progress(), reopen=not args.keep, keep=args.keep)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(first_card_markdown(report))
    print(f"report: {out}")
    return 0


def _bench_faults(args: argparse.Namespace) -> int:
    from .faults import faults_table, run_faults, write_report

    home = Path(args.home) if args.home else artifacts_root() / "bench" / "faults-home"
    out = Path(args.out) if args.out else artifacts_root() / "bench" / "faults.json"
    report = run_faults(home, load_seconds=args.load_seconds, progress=tqdm_progress())
    write_report(report, out)
    print(faults_table(report))
    print(f"report: {out}")
    return 0 if report["n_clean"] == report["n_classes"] and not report["n_lost"] else 1


# bench <mode>: add other modes here
BENCH_MODES = {"query": _bench_query, "core": _bench_core, "first-card": _bench_first_card,
               "faults": _bench_faults}


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("mode", choices=sorted(BENCH_MODES))
    add_index_args(p)
    p.add_argument("--out", default=None, help="JSON report path (default artifacts/bench/...)")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--width", type=int, default=None, help="query: load only this many columns")
    p.add_argument("--skip-quality", action="store_true", help="query: latency only")
    p.add_argument("--subset", type=int, default=None,
                   help="core: time both we and Kronfluence on this many seeded examples "
                        "(default: the whole training set)")
    p.add_argument("--bench-batch-size", type=int, default=128,
                   help="core: examples per forward-backward, the same for both")
    p.add_argument("--threads", type=int, default=2, help="core: torch threads for both")
    p.add_argument("--ranking", default="default",
                   help="first-card: the Review ranking to set up (a key of RANKINGS)")
    p.add_argument("--home", default=None,
                   help="first-card: the scratch artifacts folder, emptied first (default "
                        "artifacts/bench/first-card-<dataset>-<model>; faults: "
                        "artifacts/bench/faults-home)")
    p.add_argument("--keep", action="store_true",
                   help="first-card: time the setup over --home as it is (opening the app again) "
                        "instead of emptying it first; without it, a second run in a new process "
                        "measures that after the first")
    p.add_argument("--load-seconds", type=float, default=10.0,
                   help="faults: how long 8 sessions review concurrently (0: skip)")


def _cmd(args: argparse.Namespace) -> int:
    return BENCH_MODES[args.mode](args)


COMMANDS = {"bench": (_cmd, _add_args, "benchmarks: bench query | core | first-card | faults")}
