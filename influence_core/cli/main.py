"""Command line: `python -m influence_core <command>`. Every command calls the same public
functions the app uses. This module holds the parser and the registry; each command group
declares its commands in its own module as {name: (run, add_arguments, help)}."""

from __future__ import annotations

import argparse
import sys

from ..optional import MissingExtra
from ..runtime import tune_runtime
from . import bench, evaluate, problem, report, rounds, unlearn

COMMANDS = {  # in the order `-h` lists them
    **problem.COMMANDS,  # train, precompute, query
    **bench.COMMANDS,
    **evaluate.COMMANDS,
    **unlearn.COMMANDS,  # unlearn, backup, verify-unlearning
    **rounds.COMMANDS,  # retrain
    **report.COMMANDS,
}


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: one sub-parser per COMMANDS entry."""
    parser = argparse.ArgumentParser(prog="python -m influence_core")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, add_args, help_text) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_runtime()
    try:
        return COMMANDS[args.command][0](args)
    # DatasetError, CheckpointError, a bad config, a missing optional extra
    except (ValueError, FileNotFoundError, MissingExtra) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only artifacts folder
        print(f"error: cannot write or read {exc.filename or 'a file'}: "
              f"{exc.strerror or exc}; nothing half-written is used (free space or make the "
              "folder writable, then re-run)", file=sys.stderr)
        return 2
