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


LOAD_COMMAND = ("INFLUENCE_AUDIT_THINK_S=<s> INFLUENCE_AUDIT_LOAD_SECONDS=30 "
                "INFLUENCE_AUDIT_LOAD_REPORT=<report> pytest tests/test_browser_load.py -s")
BROWSER_LOAD = ("load_app_browser_think0.json", "load_app_browser_think2.json")


def _browser_load(r: Reports) -> str:
    """The eight-browser load runs: what the pages saw, what the log holds, and whose CPU."""
    runs = [(name, r(name)) for name in BROWSER_LOAD if (r.folder / name).exists()]
    if not runs:
        return ""
    yes = {True: "yes", False: "**no**"}
    rows = [[r.link(name), num(x["think_s"], 1), num(x["seconds"], 1), num(x["decisions"]),
             num(x["decisions_per_s"], 2), num(x["p50_ms"], 0),
             num(x["p95_ms"], 0), num(x["server_cpu_s_per_decision"], 2),
             num(x["browser_cpu_s"], 0), num(x["server_cpu_s"], 1),
             f"{num(x['lost'])} / {num(x['duplicated'])} / {num(x['unreported_rows'])} / "
             f"{num(x['exceptions'])}",
             yes[x["same_example"]["loser_sees"] == [x["same_example"]["later_action"],
                                                     x["same_example"]["later"]]]]
            for name, x in runs]
    head = (f"Load through the app: {num(runs[0][1]['sessions'])} real browser sessions "
            f"(headless chromium, one Streamlit server, digits/mlp, "
            f"{cmd(LOAD_COMMAND)};"
            f" a 15 s run is in the default suite) each press Keep on their card, after a "
            f"pause of `think` seconds, until the time is up; sessions are shown different "
            f"suspects (a card shown to one session is held for it), so no click collides. "
            f"Latency: a click until the next card has rendered in that page. The browsers run "
            f"on the same {num(runs[0][1]['cpus'])} cores as the server and use most of them "
            f"(browser CPU column): the latencies measure this machine's rendering of eight "
            f"pages, not the server, which spends the CPU seconds per decision in the server "
            f"column. Last column: two pages pinned on one suspect relabel and keep it at the "
            f"same instant; both rows are logged and the other page, reloaded, shows the later "
            f"decision.")
    grid = table(["report", "think s", "seconds", "decisions", "per s", "p50 ms", "p95 ms",
                  "server CPU s / decision", "browser CPU s", "server CPU s",
                  "lost / duplicated / unreported / exceptions", "later wins, seen"], rows)
    return head + "\n\n" + grid


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
    load = [_load(x)] if x.get("load") else []
    return "\n\n".join([head, grid] + load + ([b] if (b := _browser_load(r)) else []))
