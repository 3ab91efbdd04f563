"""`retrain`: the next cleaning round, trained on the decision log's reviewed labels."""

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


COMMANDS = {"retrain": (_cmd, _add_args,
                        "train the next cleaning round on the reviewed labels (log unchanged)")}
