"""`bench first-card`: the time from choosing a dataset and model with nothing cached to the first
Review card, measured by running the app's own setup steps in a fresh artifacts folder.

Stages, in the order the app runs them (dashboard/state.py get_problem, dashboard/early.py, then
state.workspace):
  model             load the data and train the recipe (the app's "Loading <dataset>/<model>")
  suspect ranking and first card
                    the chosen ranking's scores (extra trainings when it needs them), then the
                    queue's first suspect, the model's probabilities and the suggested label
                    (app_early.early_card): the card is on screen, its buttons greyed out
  attribution index precompute EK-FAC, self-influence and the index
  audit session     the session over the ranking's queue (scores read back from the cache) and
                    the Newton step's curvature (the index's fit)
  decisions open    the full card: the queue's first row, its influence evidence, the suggestion
`card_s`: seconds to the first card on screen; `total_s`: until its decisions open. A ranking
that needs the index (self-influence) has no early card: both are the full card's time.
Each progress message's time is kept too (`steps`: which training or pass took the time; the
first to the last report of each run of consecutive reports of that message, summed). The
browser adds its own rendering (seconds) on top.
With `reopen`, the same setup then runs again in a new process over the folder the first run
filled (`reopen_stages_s`, `reopen_total_s`): what opening the app again costs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..config import artifacts_home, artifacts_root, fresh_artifacts_root, recipe
from ..progress import Progress, silent
from ..runtime import cpu_has_bf16_units


def bench_first_card(dataset: str, model: str, data_root: str | None, ranking: str,
                     home: Path, progress: Progress = silent, reopen: bool = False,
                     keep: bool = False) -> dict:
    """Run the setup in `home` (emptied first unless `keep`; it becomes $INFLUENCE_AUDIT_HOME
    for the run) and return seconds per stage, per progress message, and in total; with
    `reopen`, also those of a second run in a new process over the filled folder."""
    from ..audit.suspects import RANKINGS

    if ranking not in RANKINGS:
        raise ValueError(f"unknown ranking {ranking!r}; choose from {', '.join(RANKINGS)}")
    with (artifacts_home if keep else fresh_artifacts_root)(home):
        report = _setup(dataset, model, data_root, ranking, progress)
    if reopen:
        again = _reopened(dataset, model, data_root, ranking, home)
        keys = ("stages_s", "steps_s", "card_s", "total_s")
        report.update({f"reopen_{k}": again[k] for k in keys})
    return report


# long: the app's setup stage by stage, timed, with the step reports kept
def _setup(dataset: str, model: str, data_root: str | None, ranking: str,
           progress: Progress) -> dict:
    from .. import app_api, app_early
    from ..audit.suspects import RANKINGS, resolve_signal
    from ..data.registry import load_problem

    seen: dict[str, list[list[float]]] = {}  # message -> its runs of consecutive reports
    last = [""]
    start = time.perf_counter()

    def report(done: int, total: int, what: str) -> None:
        now = time.perf_counter() - start
        if what != last[0]:  # a message reported again later (a cache read) starts a new run
            seen.setdefault(what, []).append([now, now])
            last[0] = what
        seen[what][-1][1] = now
        progress(done, total, what)

    stages: dict[str, float] = {}

    def stage(name: str, t0: float) -> float:
        stages[name] = round(time.perf_counter() - t0, 2)
        return time.perf_counter()

    t = time.perf_counter()
    problem = load_problem(recipe(dataset, model), data_root, progress=report)
    t = stage("model", t)
    card = app_early.early_card(problem, ranking, progress=report)  # None: needs the index
    card_s = time.perf_counter() - start
    t = stage("suspect ranking and first card", t)
    index = app_api.open_index(problem, report)  # Explore's query vectors come later
    t = stage("attribution index", t)
    session = app_api.open_audit(problem, index, progress=report, ranking=ranking)
    state = session.state()
    t = stage("audit session", t)
    row = app_api.review_queue(session, state).iloc[0]
    i, label = int(row["index"]), int(row["label"])
    probs = app_api.train_probabilities(state, problem.train, [i])[0]
    app_api.evidence(index, problem.train, i, label)
    suggested = app_api.open_suggester(problem, session.ranking).suggest(i, label, probs)
    stage("decisions open", t)
    total = time.perf_counter() - start
    return {
        "kind": "bench_first_card", "dataset": dataset, "model": model, "ranking": ranking,
        "signal": (resolve_signal(problem, RANKINGS[session.ranking].signal)
                   if session.ranking in RANKINGS else ""),
        "ranking_used": session.ranking, "n_train": len(problem.train),
        "stages_s": stages, "total_s": round(total, 2),
        "card_s": round(card_s if card is not None else total, 2),
        "steps_s": {w: round(sum(b - a for a, b in runs), 2) for w, runs in seen.items()},
        "first_card": {"index": i, "label": label, "suggested": suggested,
                       "early_card": None if card is None else
                       {"index": card.index, "label": card.label, "suggested": card.suggested}},
        "cpu_bf16_units": cpu_has_bf16_units(), "threads": _threads(),
    }


def _reopened(dataset: str, model: str, data_root: str | None, ranking: str, home: Path
              ) -> dict:
    """The setup again in a new Python process over `home` as the first run left it."""
    out = home / "reopen.json"
    command = [sys.executable, "-m", "influence_core", "bench", "first-card", "--dataset",
               dataset, "--model", model, "--ranking", ranking, "--home", str(home), "--keep",
               "--out", str(out)] + (["--data-root", data_root] if data_root else [])
    subprocess.run(command, check=True, capture_output=True, env=dict(os.environ))
    return json.loads(out.read_text())


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def default_home(dataset: str, model: str) -> Path:
    """A scratch artifacts folder for the benchmark, inside the usual one (never /tmp)."""
    name = f"{dataset}-{model}".replace(":", "_").replace("/", "_")
    return artifacts_root() / "bench" / f"first-card-{name}"


def first_card_markdown(r: dict) -> str:
    lines = [f"Time to the first Review card, {r['dataset']}/{r['model']}, ranking "
             f"`{r['ranking_used']}` ({r['signal']}), nothing cached: {r['card_s']:.0f} s on "
             f"screen, {r['total_s']:.0f} s until its decisions open.", "",
             "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["stages_s"].items()]
    if "reopen_total_s" in r:
        lines += ["", f"Opened again in a new process over the same folder: "
                      f"{r['reopen_total_s']:.0f} s."]
    return "\n".join(lines) + "\n"
