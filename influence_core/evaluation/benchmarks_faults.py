"""The docs/benchmarks.md section of `bench faults`: one row per class of bad input (where it
went in, what the user was told, whether it was refused cleanly or converted, whether anything
was lost) and the concurrent-review load figures, from docs/reports/faults.json."""

from __future__ import annotations

from .benchmarks_doc import CLI, Reports, cmd, num, table

REPORT = "faults.json"


def _code(text: str) -> str:
    """A table cell as a code span (messages hold paths, numbers and '|')."""
    return "`" + text.replace("`", "'").replace("|", "/") + "`" if text else ""


def _rows(x: dict) -> list[list[str]]:
    return [[_code(r["class"]), _code(r["input"]), _code(r["where"]), r["verdict"],
             _code(r["converted_to"] or r["message"]), "**yes**" if r["lost"] else "no"]
            for r in x["rows"]]


def _load(x: dict) -> str:
    c, race = x["load"]["concurrent"], x["load"]["same_example"]
    yes = {True: "yes", False: "**no**"}
    return (f"Load: {num(c['sessions'])} sessions (threads, each with its own log handle, one "
            f"curvature fit) clicked through `record_many` on one decision log for "
            f"{num(c['seconds'], 1)} s: {num(c['decisions'])} decisions "
            f"({num(c['decisions_per_s'], 1)} per second; {num(c['refused_clicks'])} clicks "
            f"refused as already in force or on a removed example), latency per click median "
            f"{num(c['p50_ms'], 1)} ms, p95 {num(c['p95_ms'], 1)} ms on {num(x['cpus'])} CPU "
            f"cores; lost "
            f"{num(c['lost'])}, duplicated {num(c['duplicated'])}, rows nobody reported "
            f"{num(c['unreported_rows'])}, exceptions {num(c['errors'])}. Two annotators "
            f"relabelling one example at the same instant: both logged {yes[race['both_logged']]}"
            f", the later row is the active decision {yes[race['later_wins']]}, the other "
            f"session sees it on its next read {yes[race['other_session_sees_it']]}.")


def faults(r: Reports) -> str:
    x = r(REPORT)
    head = (f"Each class of bad input fed to a real entry point in a scratch artifacts folder "
            f"({cmd(f'{CLI} bench faults --out docs/reports/{REPORT}')}): "
            f"{num(x['n_clean'])} of {num(x['n_classes'])} refused cleanly (the expected error "
            f"type or exit status, one line, no traceback) or converted; "
            f"{num(x['n_lost'])} lost or left anything (the check of each is in the report's "
            f"`lost_check`).")
    grid = table(["class", "input", "where", "result", "message, or what it became", "lost"],
                 _rows(x))
    return "\n\n".join([head, grid] + ([_load(x)] if x.get("load") else []))
