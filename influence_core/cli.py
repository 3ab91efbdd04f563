"""Command line: `python -m influence_core <command>`. Every command calls the same public
functions the app uses."""

from __future__ import annotations

import argparse
import sys

from .config import recipe
from .progress import tqdm_progress


def _add_problem_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits", help="digits | mnist | fashion_mnist | cifar10 | "
                   "flowers102 | food101 | imagefolder:<path>")
    p.add_argument("--model", default="mlp", help="mlp | cnn | resnet18 | resnet50 | vit_b_16")
    p.add_argument("--data-root", default=None, help="torchvision data root (default ./data)")
    p.add_argument("--noise", type=float, default=None, help="fraction of labels to flip")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--checkpoint", default=None, help="your own state_dict (weights_only)")


def problem_from_args(args: argparse.Namespace):
    from .registry import load_problem

    cfg = recipe(args.dataset, args.model, noise=args.noise, seed=args.seed, epochs=args.epochs,
                 weight_decay=args.weight_decay)
    return load_problem(cfg, args.data_root, args.checkpoint, tqdm_progress())


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import checkpoint_dir

    problem = problem_from_args(args)
    print(f"test accuracy: {problem.meta['test_accuracy']:.4f}")
    if "seconds_per_epoch" in problem.meta:
        print(f"seconds per epoch: {problem.meta['seconds_per_epoch']}")
    print(f"checkpoint: {checkpoint_dir(problem.config) / 'model.pt'}")
    return 0


COMMANDS = {"train": (_cmd_train, _add_problem_args, "train (or reuse) a model")}

from .cli_evaluate import COMMAND as _EVALUATE  # noqa: E402  (issue 6)

COMMANDS["evaluate"] = _EVALUATE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m influence_core")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, add_args, help_text) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][0](args)
    except (ValueError, FileNotFoundError) as exc:  # DatasetError, CheckpointError, bad config
        print(f"error: {exc}", file=sys.stderr)
        return 2
