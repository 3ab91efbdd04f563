"""Cleaning rounds with a simulated annotator: how much of the clean-label accuracy comes back.

Setting: the recipe trained on labels with injected noise (the flip mask is the truth). An
annotator who knows the true labels follows a queue for B = round(budget x N) decisions per round:
a flipped example is relabelled to its true label, any other is kept. After each round the Newton
step over all decisions so far (the round's audit session) and a retrain on the corrected labels
(audit.rounds.retrain_round: the next round) are evaluated on the test split, for R rounds.
Queues, all in the same run and from the same noisy model:
  app        what the Review page shows: round 1 the default ranking (audit.suspects
             DEFAULT_SIGNAL, the fit gate: its signal for the noisy model is the seed's
             "app_signal") of the noisy model, later rounds the retrained round's own queue
             (audit.rounds.QUEUE_RANKING, its scores.npy over every example)
  cleanlab   cleanlab's ranking (evaluation.baselines.cleanlab_scores) of 5-fold out-of-sample
             probabilities, trained with the recipe on the round's current labels
  random     a seeded random order
  perfect    every decision on a flipped example while any is left (in a seeded random order
             among them), then the rest: the most any queue can repair within the budget
Every queue leaves out what was already reviewed. The app queue's last retrain is also repeated
leaving out the next suspects (evaluation.round_pruning), a measurement the app does not use.
Gap closed = (acc - acc_noisy) / (acc_clean - acc_noisy), acc_clean a training of the same
recipe and seed on the clean labels; the noise floor is |acc_clean(seed) - acc_clean(seed +
FLOOR_SEED)|, two clean trainings differing in seed only. The clean trainings do not depend
on the noise kind, so every kind of a seed shares them.

Resumable: each (seed, queue) has its own decision log and rounds under
artifacts/evaluation/rounds/<config hash>-<queue>-b<budget>; trainings are cached (recipe models
by config hash, rounds on disk, cross-validated probabilities as .npy), decisions are replayed
from the log and only the missing ones are made.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from ..audit.round_signals import out_of_sample_probs
from ..audit.rounds import (
    QUEUE_RANKING,
    Round,
    labels_at,
    list_rounds,
    open_round_session,
    retrain_round,
    reviewed_at,
    round_queue,
)
from ..audit.session import open_session
from ..audit.signals import MEMORISING_SIGNAL
from ..audit.store import DecisionLog
from ..audit.suspects import DEFAULT_SIGNAL, resolve_signal, suspect_scores
from ..config import artifacts_root, config_hash, recipe
from ..data.registry import Problem, load_problem
from ..data.training import accuracy, predict_logits
from ..progress import Progress, silent
from .baselines import cleanlab_scores
from .round_goal import goal_demand
from .round_pruning import pruned_retrains, pruning_figures
from .round_rankings import EARLIER_QUEUE_RANKING, candidate_flips, candidate_fractions

QUEUES = ("app", "cleanlab", "random", "perfect")
FOLDS = 5  # cleanlab's cross-validation
FLOOR_SEED = 1000  # the second clean training of the noise floor: seed + FLOOR_SEED


#: The app queue's round-1 ranking before the fit gate (reports without "app_signal"; old folders)
EARLIER_APP_SIGNAL = MEMORISING_SIGNAL


def _folder(problem: Problem, queue: str, budget: float) -> Path:
    signal = resolve_signal(problem, DEFAULT_SIGNAL) if queue == "app" else ""
    if signal and signal != EARLIER_APP_SIGNAL:  # another queue: its own log and rounds
        queue = f"app-{signal.replace('+', '_').replace(':', '_')}"
    if signal and QUEUE_RANKING != EARLIER_QUEUE_RANKING:  # later rounds ordered otherwise
        queue += f"-q{QUEUE_RANKING.replace('+', '_')}"
    return (artifacts_root() / "evaluation" / "rounds"
            / f"{config_hash(problem.config)}-{queue}-b{budget:g}")


def _cv_probs(problem: Problem, labels: torch.Tensor, path: Path) -> torch.Tensor:
    """(N, K) 5-fold out-of-sample probabilities under `labels` (cached at `path`)."""
    if path.is_file():
        return torch.from_numpy(np.load(path))
    probs = out_of_sample_probs(problem, labels, torch.zeros(len(labels), dtype=torch.bool),
                                FOLDS)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path.with_suffix(".tmp.npy"), probs.numpy())
    path.with_suffix(".tmp.npy").replace(path)
    return probs


def _queue(queue: str, problem: Problem, rnd: Round | None, log: DecisionLog,
           folder: Path, number: int, true: torch.Tensor) -> list[int]:
    labels, removed = labels_at(log)
    excluded = removed | reviewed_at(log)
    if queue in ("random", "perfect"):
        gen = torch.Generator().manual_seed(problem.config.seed * 100 + number)
        order = torch.randperm(len(labels), generator=gen)
        order = order[~excluded[order]]
        if queue == "perfect":  # flips first, each part in the random order
            flip = labels[order] != true[order]
            order = torch.cat([order[flip], order[~flip]])
        return order.tolist()
    if queue == "cleanlab":
        probs = _cv_probs(problem, labels, folder / f"cv_round{number}.npy")
        return round_queue(cleanlab_scores(labels, probs)[0], excluded, len(labels)).tolist()
    if rnd is None:  # round 1: the default ranking of the noisy model, as the app orders it
        scores = suspect_scores(problem, DEFAULT_SIGNAL)
    else:
        scores = torch.from_numpy(np.load(rnd.folder / "scores.npy"))
    return round_queue(scores, excluded, len(labels)).tolist()


def _review(log: DecisionLog, queue: list[int], true: torch.Tensor, todo: int) -> None:
    """The simulated annotator: `todo` decisions along `queue` (relabel to truth, or keep)."""
    labels, _ = labels_at(log)
    for i in queue[:todo]:
        if int(labels[i]) != int(true[i]):
            log.record(i, "relabel", int(true[i]), "simulated")
        else:
            log.record(i, "keep", None, "simulated")


_BASE_FITS: dict[str, object] = {}  # per process: the noisy model's EK-FAC, shared by queues


def _session(problem: Problem, log: DecisionLog, rnd: Round | None) -> object:
    """The round's audit session; round 1's reuses the noisy model's fit across queues."""
    if rnd is not None:
        return open_round_session(problem, log.path, rnd)
    key = config_hash(problem.config)
    session = open_session(problem, "ekfac", log.path, fitted=_BASE_FITS.get(key))
    _BASE_FITS.clear()
    _BASE_FITS[key] = session.curvature
    return session


# long: one round's steps in order (queue, review, Newton step, retrain), each a line or two
def run_queue(problem: Problem, queue: str, budget: float, rounds: int, true: torch.Tensor,
              progress: Progress = silent) -> list[dict]:
    """R rounds of `queue` on problem: one row per round (flips fixed, accuracies)."""
    folder = _folder(problem, queue, budget)
    folder.mkdir(parents=True, exist_ok=True)
    log = DecisionLog(folder / "log.db", problem.train.labels, problem.train.num_classes)
    per_round, rows = round(budget * len(true)), []
    try:
        for number in range(1, rounds + 1):
            progress(number - 1, rounds, f"{queue} queue, seed {problem.config.seed}")
            done = {r.number: r for r in list_rounds(folder / "rounds")}
            rnd, retrained = done.get(number), done.get(number + 1)
            start = rnd.log_version if rnd is not None else 0
            if retrained is None:  # this round's decisions are not all made or not retrained
                made = sum(d.id > start for d in log.decisions())
                order = _queue(queue, problem, rnd, log, folder, number, true)
                _review(log, order, true, per_round - made)
                retrained = retrain_round(problem, log, folder / "rounds",
                                          build_index=False)  # nothing here explores it
            end = retrained.log_version  # this round's decisions: start < id <= end
            fixed_round = sum(start < d.id <= end and d.action == "relabel"
                              for d in log.decisions())
            labels, _ = labels_at(log, end)
            session = _session(problem, log, rnd)
            newton = accuracy(session.state_for(*session.edits(end), end).model, problem.test)
            rows.append({"round": number, "decisions": per_round, "flips_fixed": fixed_round,
                         "flips_left": int((labels != true).sum()),
                         "accuracy_newton": newton,
                         "accuracy_retrained": float(retrained.meta["test_accuracy"])})
            if queue == "app" and rnd is not None:  # what each round ranking would have found
                rows[-1]["queue_candidates"] = candidate_flips(
                    problem, folder / "rounds", rnd, log, per_round, true)
            if queue == "app" and number == rounds:  # the last retrain, next suspects left out
                rows[-1]["pruned_retrains"] = pruned_retrains(
                    problem, retrained, log, true, folder / "rounds", progress=progress)
        progress(rounds, rounds, f"{queue} queue, seed {problem.config.seed}")
    finally:
        log.close()
    return rows


def _gap(acc: float, noisy: float, clean: float) -> float | None:
    return (acc - noisy) / (clean - noisy) if clean != noisy else None


def run_seed(dataset: str, model: str, noise: float, kind: str, seed: int, budget: float,
             rounds: int, data_root: str | None = None, progress: Progress = silent,
             queues: tuple[str, ...] = QUEUES) -> dict:
    """One seed (noise draw and training seed): the noisy model, both clean references and
    the rounds of each of `queues`; gap fractions computed from the accuracies reported
    alongside."""
    cfg = recipe(dataset, model, noise=noise, noise_kind=kind, noise_seed=seed, seed=seed)
    problem = load_problem(cfg, data_root, progress=progress)
    clean_cfg = dataclasses.replace(cfg, noise=0.0, noise_kind="uniform")  # shared by kinds
    refs = [load_problem(c, data_root, progress=progress) for c in
            (clean_cfg, dataclasses.replace(clean_cfg, seed=seed + FLOOR_SEED))]
    clean, other = (r.meta["test_accuracy"] for r in refs)
    preds = [predict_logits(r.model, problem.test).argmax(1) for r in refs]
    noisy, true = problem.meta["test_accuracy"], problem.train.original_labels
    out = {"seed": seed, "flips": int(problem.flip_mask.sum()), "num_train": len(true),
           "num_test": len(problem.test), "accuracy_noisy": noisy, "accuracy_clean": clean,
           "accuracy_clean_other_seed": other, "noise_floor": abs(clean - other),
           "clean_disagreement": float((preds[0] != preds[1]).double().mean()),
           "app_signal": resolve_signal(problem, DEFAULT_SIGNAL), "queues": {}}
    for queue in queues:
        rows = run_queue(problem, queue, budget, rounds, true, progress)
        for row in rows:
            row["gap_closed_newton"] = _gap(row["accuracy_newton"], noisy, clean)
            row["gap_closed_retrained"] = _gap(row["accuracy_retrained"], noisy, clean)
            for pruned in row.get("pruned_retrains", {}).values():
                pruned["gap_closed"] = _gap(pruned["accuracy"], noisy, clean)
        out["queues"][queue] = rows
    return out


def mean_present(values: list) -> float | None:
    """The mean of the values that are not None (None when there are none)."""
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(seeds: list[dict]) -> dict:
    """queue -> one row per round: the mean over seeds of every number of run_queue's rows."""
    keys = ("flips_fixed", "flips_left", "accuracy_newton", "accuracy_retrained",
            "gap_closed_newton", "gap_closed_retrained")
    out = {}
    for queue in seeds[0]["queues"]:
        per_round = zip(*[s["queues"][queue] for s in seeds])
        out[queue] = [{"round": rows[0]["round"],
                       **{k: mean_present([r[k] for r in rows]) for k in keys}}
                      for rows in per_round]
    return out


def derived_figures(result: dict) -> dict:
    """What the benchmarks page compares with the goal, from the report's own numbers: the gap
    (clean - noisy test accuracy) and noise floor averaged over seeds, and per queue the last
    round's gap closed after the retrain (mean, and the worst seed) and after the Newton step,
    and what the goal asks of a queue (evaluation.round_goal)."""
    seeds = result["seeds"]
    final = {}
    for queue, rows in result["summary"].items():
        last = [s["queues"][queue][-1]["gap_closed_retrained"] for s in seeds]
        final[queue] = {"gap_closed_retrained": rows[-1]["gap_closed_retrained"],
                        "gap_closed_retrained_worst_seed": min(
                            (v for v in last if v is not None), default=None),
                        "gap_closed_newton": rows[-1]["gap_closed_newton"],
                        "accuracy_retrained": rows[-1]["accuracy_retrained"],
                        "flips_left": rows[-1]["flips_left"]}
    out = {"gap": mean_present([s["accuracy_clean"] - s["accuracy_noisy"] for s in seeds]),
           "noise_floor": mean_present([s["noise_floor"] for s in seeds]), "final": final,
           "app_signals": sorted({s.get("app_signal", EARLIER_APP_SIGNAL) for s in seeds})}
    if (fractions := candidate_fractions(seeds)) is not None:
        out["queue_candidates"] = fractions
    if (pruned := pruning_figures(seeds)) is not None:
        out["pruned_retrains"] = pruned
    if (demand := goal_demand(result)) is not None:
        out["goal_demand"] = demand
    if "app" in final and "cleanlab" in final and None not in (
            final["app"]["gap_closed_retrained"], final["cleanlab"]["gap_closed_retrained"]):
        out["app_minus_cleanlab"] = (final["app"]["gap_closed_retrained"]
                                     - final["cleanlab"]["gap_closed_retrained"])
    return out


def kept_seeds(path: Path, setting: dict, queues: tuple[str, ...]) -> dict[int, dict]:
    """seed -> its run_seed result, from the report at `path` when that report is of
    `setting` (every key of it equal) and holds exactly `queues`, each with every round."""
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if any(old.get("setting", {}).get(k) != v for k, v in setting.items()):
        return {}
    return {s["seed"]: s for s in old.get("seeds", [])
            if set(s.get("queues", {})) == set(queues)
            and all(len(s["queues"][q]) == setting["rounds"] for q in queues)}


def run_rounds_report(dataset: str, model: str, noise: float, kind: str, budget: float,
                      rounds: int, seeds: list[int], out: Path, data_root: str | None = None,
                      progress: Progress = silent, command: str = "",
                      queues: tuple[str, ...] = QUEUES,
                      rerun: tuple[int, ...] = ()) -> tuple[Path, dict]:
    """Every seed's run_seed, their summary, written by reports.write_report into `out`
    (rounds_<dataset>_<model>_<kind>_<noise>.json / .md / .accuracy figure). A seed that the
    report already in `out` holds for the same setting and queues is taken from it instead of
    run again (its trainings may be gone from this machine), unless it is in `rerun`."""
    from .reports import write_report
    from .rounds_report import rounds_figure, rounds_markdown

    name = f"rounds_{dataset}_{model}_{kind}_{noise:g}".replace(":", "_").replace("/", "_")
    setting = {"dataset": dataset, "model": model, "noise": noise, "noise_kind": kind,
               "budget": budget, "rounds": rounds, "queue_ranking": QUEUE_RANKING}
    kept = {s: v for s, v in kept_seeds(out / f"{name}.json", setting, queues).items()
            if s not in rerun}
    runs = [kept[s] if s in kept else run_seed(dataset, model, noise, kind, s, budget, rounds,
                                               data_root, progress, queues) for s in seeds]
    result = {"setting": {**setting, "seeds": seeds,
                          "decisions_per_round": round(budget * runs[0]["num_train"])},
              "seeds": runs, "summary": summarise(runs), "command": command,
              "seeds_from_earlier_report": sorted(set(seeds) & set(kept))}
    result["derived"] = derived_figures(result)
    path = write_report(out, name, result, rounds_markdown(result),
                        {"accuracy": rounds_figure(result)})
    return path, result
