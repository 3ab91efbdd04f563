"""`python -m influence_core unlearn` and `verify-unlearning`.

  unlearn --remove 1,2,3 --relabel 7:3 8:1 [--undo ID] [--export DIR] [--damping L]: record the
      decisions in the model's decision log (the whole batch or nothing, committed first;
      decisions already in force are reported, not repeated), then print the updated model's
      summary with the recorded ids. The Newton step's damping: audit.unlearning.newton_damping.
  verify-unlearning: Newton step vs real retraining; writes JSON and prints a Markdown table.
  backup --log DB --to FILE: a consistent copy of a decision log (SQLite's backup API), safe
      while the app or another command writes to it.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..config import CURVATURE_CONFIGS
from ..progress import tqdm_progress
from .args import add_data_args, add_problem_args, positive_float, problem_from_args


def _ints(text: str | None, flag: str = "--remove") -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()] if text else []
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, got {text!r}") from None


def _pairs(items: list[str] | None) -> list[tuple[int, int]]:
    out = []
    for item in items or []:
        for pair in filter(None, item.split(",")):
            index, _, label = pair.partition(":")
            if not label:
                raise ValueError(f"--relabel takes INDEX:LABEL, got {pair!r}")
            try:
                out.append((int(index), int(label)))
            except ValueError:
                raise ValueError(f"--relabel takes INDEX:LABEL, got {pair!r}") from None
    return out


def _add_unlearn_args(p: argparse.ArgumentParser) -> None:
    add_problem_args(p)
    p.add_argument("--remove", default=None, help="training indices to remove: 1,2,3")
    p.add_argument("--relabel", nargs="*", default=None, help="INDEX:LABEL pairs: 7:3 8:1")
    p.add_argument("--keep", default=None, help="indices reviewed and kept as they are")
    p.add_argument("--undo", default=None, help="decision ids to undo: 4,5")
    p.add_argument("--annotator", default="cli")
    p.add_argument("--method", default="ekfac", choices=tuple(CURVATURE_CONFIGS),
                   help="curvature of the Newton step")
    p.add_argument("--damping", type=positive_float, default=None,
                   help="absolute lambda of the Newton step (default: 1000 x the recipe's "
                        "weight decay, 1e-3 without one)")
    p.add_argument("--log", default=None, help="decision log (default artifacts/decisions/)")
    p.add_argument("--full-refresh", action="store_true", help="refit the curvature after edits")
    p.add_argument("--export", default=None, help="folder for labels.csv and model.pt")


def _cmd_unlearn(args: argparse.Namespace) -> int:
    from ..audit.session import open_session

    requests = [("remove", i, None) for i in _ints(args.remove)]
    requests += [("relabel", i, y) for i, y in _pairs(args.relabel)]
    requests += [("keep", i, None) for i in _ints(args.keep, "--keep")]
    requests += [("undo", d, None) for d in _ints(args.undo, "--undo")]
    problem = problem_from_args(args)
    session = open_session(problem, args.method, args.log, tqdm_progress(), args.damping)
    recorded, notes = session.apply(requests, annotator=args.annotator)
    for note in notes:
        print(f"unchanged: {note}", file=sys.stderr)
    state = session.state(full_refresh=args.full_refresh)
    accuracy = float((state.test_logits.argmax(1) == problem.test.labels).float().mean())
    print(json.dumps({
        "log": str(session.log.path), "model_version": state.version,
        "recorded": [d.id for d in recorded], "unchanged": notes,
        "removed": int(state.removed.sum()), "relabelled": len(session.edits()[1]),
        "test_accuracy": round(accuracy, 4), "base_test_accuracy": problem.meta["test_accuracy"],
        "seconds": {k: round(v, 4) for k, v in state.seconds.items()},
        "top_suspects": state.suspects[:10].tolist(), "approximations": state.approximations,
    }, indent=1))
    if args.export:
        csv_path, ckpt = session.export(args.export)
        print(f"labels: {csv_path}\ncheckpoint: {ckpt}")
    return 0


def _add_verify_args(p: argparse.ArgumentParser) -> None:
    add_data_args(p, described=False)
    p.add_argument("--curvature", default="ekfac")
    p.add_argument("--experiments", default="remove,relabel", help="remove,relabel")
    p.add_argument("--no-extra-sets", action="store_true", help="headline removal set only")
    p.add_argument("--no-noise-floor", action="store_true", help="skip the seed-1 retraining")
    p.add_argument("--full-refine", action="store_true", help="also full-objective refinement")
    p.add_argument("--full-refine-steps", type=int, default=20,
                   help="line-searched steps of --full-refine (default 20)")
    p.add_argument("--damping", type=positive_float, default=None,
                   help="absolute lambda of the Newton step (default: calibrated on held-out "
                        "removal sets, which retrains 3 models and fits 6 curvatures)")
    p.add_argument("--refine-points", type=int, default=None,
                   help="kept points in the refinement's objective (default 8192; larger is "
                        "more faithful and slower)")


def _cmd_verify(args: argparse.Namespace) -> int:
    from ..config import VerifyConfig
    from ..evaluation.unlearning import markdown_table, verify_unlearning

    cfg = VerifyConfig(dataset=args.dataset, model=args.model, curvature=args.curvature,
                       experiments=tuple(args.experiments.split(",")),
                       extra_sets=not args.no_extra_sets, noise_floor=not args.no_noise_floor,
                       full_refine=args.full_refine, full_refine_steps=args.full_refine_steps,
                       damping=args.damping,
                       **({"refine_points": args.refine_points} if args.refine_points else {}))
    result = verify_unlearning(cfg, args.data_root, tqdm_progress())
    print(markdown_table(result))
    print(f"json: {result['path']}")
    return 0


def _add_backup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log", required=True, help="the decision log to copy (a .db file)")
    p.add_argument("--to", required=True, help="the backup file to write")


def _cmd_backup(args: argparse.Namespace) -> int:
    from ..audit.store import backup_log

    count = backup_log(args.log, args.to)
    print(f"backed up {count} decisions from {args.log} to {args.to}")
    return 0


COMMANDS = {
    "unlearn": (_cmd_unlearn, _add_unlearn_args,
                "record remove/relabel/keep/undo decisions and update the model (Newton step)"),
    "backup": (_cmd_backup, _add_backup_args,
               "copy a decision log consistently, even while the app writes to it"),
    "verify-unlearning": (_cmd_verify, _add_verify_args,
                          "Newton-step unlearning vs real retraining (JSON + table)"),
}
