"""`retrain`: the next cleaning round, trained on the decision log's reviewed labels.
`calibrate`: the Newton step's damping per edit kind for a model (audit.damping)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..progress import tqdm_progress
from .args import add_problem_args, problem_from_args


def _add_args(p: argparse.ArgumentParser) -> None:
    add_problem_args(p)
    p.add_argument("--log", default=None,
                   help="decision log (default: the model's, as the app and `unlearn` use)")


def _cmd(args: argparse.Namespace) -> int:
    from ..audit.rounds import retrain_round
    from ..audit.session import decision_log_path
    from ..audit.store import DecisionLog

    problem = problem_from_args(args)
    path = Path(args.log) if args.log else decision_log_path(problem)
    if not path.is_file():
        raise FileNotFoundError(f"no decision log at {path}: review some suspects first")
    log = DecisionLog(path, problem.train.labels, problem.train.num_classes)
    try:
        rnd = retrain_round(problem, log, progress=tqdm_progress())
    finally:
        log.close()
    keys = ("round", "parent", "log_version", "num_train", "reviewed", "test_accuracy")
    print(json.dumps({k: rnd.meta[k] for k in keys}, indent=1))
    print(f"base test accuracy: {problem.meta['test_accuracy']:.4f}")
    print(f"round folder: {rnd.folder}")
    return 0


def _add_calibrate_args(p: argparse.ArgumentParser) -> None:
    add_problem_args(p)
    p.add_argument("--method", default="ekfac", choices=("ekfac", "kfac"),
                   help="the estimator whose Newton step is calibrated (the app's choice)")
    p.add_argument("--out", default=None, help="also write the calibration here (a report)")


def _calibrate(args: argparse.Namespace) -> int:
    from ..audit.damping import calibrate, calibration_path
    from ..audit.session import decision_log_path
    from ..config import CURVATURE_CONFIGS
    from ..curvature import fit_curvature
    from ..curvature.gradients import TrackedModel
    from ..curvature.task import ClassificationTask

    problem = problem_from_args(args)
    progress = tqdm_progress()
    curv = fit_curvature(args.method, TrackedModel(problem.model), ClassificationTask(),
                         problem.train, CURVATURE_CONFIGS[args.method](), progress=progress)
    path = calibration_path(decision_log_path(problem), args.method)
    rule = calibrate(problem, curv, path, progress)
    result = json.loads(path.read_text())
    print(json.dumps(result["kinds"], indent=1))
    if args.out:
        meta = {"dataset": args.dataset, "model": args.model, "method": args.method,
                "num_train": len(problem.train), "test_accuracy": problem.meta["test_accuracy"]}
        Path(args.out).write_text(json.dumps({**meta, **result}, indent=1) + "\n")
    print(rule.describe())
    print(f"written: {path} (sessions opened on this model from now on use it)")
    return 0


COMMANDS = {"retrain": (_cmd, _add_args,
                        "train the next cleaning round on the reviewed labels (log unchanged)"),
            "calibrate": (_calibrate, _add_calibrate_args,
                          "choose the Newton step's damping per edit kind by retraining on "
                          "held-out edits (four trainings)")}
