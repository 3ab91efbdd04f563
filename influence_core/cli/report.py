"""`python -m influence_core report [--check]`: docs/benchmarks.md and the README's results
block from the JSON reports (evaluation.benchmarks_doc)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reports", default="docs/reports", help="folder of JSON reports")
    p.add_argument("--out", default="docs/benchmarks.md")
    p.add_argument("--readme", default="README.md", help="README with the results markers")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 (with a diff) when the files are stale")


def _cmd(args: argparse.Namespace) -> int:
    from ..evaluation.benchmarks_doc import run

    return run(Path(args.reports), Path(args.out), Path(args.readme), args.check)


COMMANDS = {"report": (_cmd, _add_args,
                       "docs/benchmarks.md and the README results block from the reports")}
