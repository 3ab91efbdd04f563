"""`bench faults`: every class of bad input run against the real entry points (CLI commands and
core / app_api functions) in a scratch artifacts folder, one report row per class.

A row records the input, where it went in, the first line of the message the user gets, and two
verdicts: `clean` (refused with the expected error type and no traceback, or, for image modes that
must be accepted, converted to 8-bit L / RGB) and `lost` (whether anything was damaged or left
behind: the decision log's rows, a file's bytes, a half-written checkpoint or artifact folder).
Paths inside the scratch folder are printed as <home>, so reports from two machines compare.
The cases are in fault_cases.py, their inputs in evaluation/fault_inputs.py, the load test in
evaluation/faults_load.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..config import fresh_artifacts_root
from ..progress import Progress, silent

QUICK = ["--epochs", "2"]  # a digits/mlp trained in about a second: every CLI case uses it


@dataclass
class Outcome:
    """What the user saw: an exit status or exception type, the first line of the message."""

    got: str  # "exit 2", "ImageError", "returned", "traceback: KeyError", ...
    message: str
    traceback: bool


@dataclass
class Scratch:
    """The scratch artifacts folder a run works in, and the shared digits/mlp problem."""

    home: Path
    problem: object = None  # the digits/mlp problem of QUICK (trained on first use)
    index: object = None  # its attribution index (fault_cases: built on first use)
    session: object = None  # an audit session on a log with one decision (likewise)

    def path(self, name: str) -> Path:
        path = self.home / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def relative(self, text: str) -> str:
        return text.replace(str(self.home), "<home>")

    def quick_problem(self) -> object:
        if self.problem is None:
            from ..config import recipe
            from ..data.registry import load_problem

            self.problem = load_problem(recipe("digits", "mlp", epochs=2))
        return self.problem


def first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


def run_cli(argv: list[str]) -> Outcome:
    """`python -m influence_core argv` in this process: exit status and its error line (the
    line starting "error:" or argparse's "...: error: ...", after any progress bars)."""
    from .main import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse refusals
            code = exc.code
        except Exception as exc:  # a crash: exactly what this bench exists to find
            return Outcome(f"traceback: {type(exc).__name__}", first_line(str(exc)), True)
    text = err.getvalue()
    errors = [ln for ln in text.splitlines() if ln.startswith("error:") or ": error:" in ln]
    return Outcome(f"exit {code}", errors[-1].strip() if errors else first_line(text),
                   "Traceback" in text)


def run_core(call: Callable[[], object]) -> tuple[Outcome, object]:
    """(what the user saw, the return value or None) of a core / app_api call."""
    try:
        value = call()
    except Exception as exc:
        return Outcome(type(exc).__name__, first_line(str(exc)), False), None
    return Outcome("returned", "", False), value


def row(scratch: Scratch, name: str, given: str, where: str, expected: str, outcome: Outcome,
        lost: bool, lost_check: str, converted: str | None = None) -> dict:
    """One report row; `clean`: the outcome is `expected` (an exit status, an exception type,
    or "converted") and no traceback reached the user."""
    clean = not outcome.traceback and (outcome.got == expected or
                                       (expected == "converted" and converted is not None))
    verdict = ("converted" if converted is not None else "refused cleanly") if clean else "FAILED"
    return {"class": name, "input": given, "where": where, "expected": expected,
            "got": outcome.got, "message": scratch.relative(outcome.message),
            "converted_to": converted, "clean": clean, "lost": lost,
            "lost_check": lost_check, "verdict": verdict}


@contextlib.contextmanager
def scratch_home(home: Path) -> Iterator[Scratch]:
    """$INFLUENCE_AUDIT_HOME pointed at `home` (emptied first) for the duration."""
    with fresh_artifacts_root(home) as root:
        yield Scratch(root)


def run_case(scratch: Scratch, name: str, case: Callable[[Scratch], dict]) -> dict:
    """One case; a case that itself crashes is a FAILED row, not the end of the run."""
    try:
        return case(scratch)
    except Exception as exc:
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return row(scratch, name, "", "", "", Outcome(f"bench crashed: {type(exc).__name__}",
                                                      tb, True), True, "not checked")


def run_faults(home: Path, names: list[str] | None = None, load_seconds: float = 10.0,
               progress: Progress = silent) -> dict:
    """Every fault case (or those `names`) and, unless load_seconds is 0, the load test; the
    report dict (rows in CASES order)."""
    from .fault_cases import CASES

    chosen = [(n, c) for n, c in CASES if names is None or n in names]
    rows, start = [], time.perf_counter()
    with scratch_home(home) as scratch:
        for k, (name, case) in enumerate(chosen):
            rows.append(run_case(scratch, name, case))
            progress(k + 1, len(chosen), f"fault {name}")
        load = None
        if load_seconds > 0:
            from ..evaluation.faults_load import concurrent_review, same_example_race

            load = {"concurrent": concurrent_review(scratch.quick_problem(), home / "load",
                                                    seconds=load_seconds),
                    "same_example": same_example_race(scratch.quick_problem(), home / "race")}
    return {"rows": rows, "n_classes": len(rows),
            "n_clean": sum(r["clean"] for r in rows),
            "n_lost": sum(r["lost"] for r in rows), "load": load,
            "seconds": round(time.perf_counter() - start, 1), "cpus": os.cpu_count(),
            "command": "python -m influence_core bench faults"}


def write_report(report: dict, path: Path) -> Path:
    """The report as JSON (every row), written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)
    return path


def faults_table(report: dict) -> str:
    """A plain-text table of the rows, for the terminal."""
    lines = [f"{'class':28} {'where':30} {'verdict':16} lost  message"]
    for r in report["rows"]:
        tail = r["converted_to"] or r["message"]
        lines.append(f"{r['class'][:28]:28} {r['where'][:30]:30} {r['verdict']:16} "
                     f"{'YES' if r['lost'] else 'no':5} {tail[:90]}")
    load = report.get("load")
    if load:
        c = load["concurrent"]
        lines.append(f"load: {c['sessions']} sessions, {c['decisions']} decisions in "
                     f"{c['seconds']} s ({c['decisions_per_s']}/s), p95 {c['p95_ms']} ms, "
                     f"lost {c['lost']}, duplicated {c['duplicated']}, errors {c['errors']}")
    return "\n".join(lines)
