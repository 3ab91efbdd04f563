"""Choosing the round queue's ranking (audit.rounds.ROUND_RANKINGS) on a development split.

At every round after the first, the app queue's run (evaluation.cleaning_rounds.run_queue) also
counts, for each candidate ranking, how many of the round's B decisions would land on a flipped
example had the queue followed that ranking: the top B of the examples neither reviewed nor
removed when the round opened, scored from the same retrained model (its own class-normalised
checkpoint loss, checkpoint_loss.npy), the previous round's stored queue scores (round 1: the
default ranking of the noisy model) and the round's 2-fold out-of-sample loss on its labels
(audit.round_signals; computed for the count when the round did not keep one, cached beside the
rounds as cv2_loss_round<n>.npy). Every candidate sees the same model and the same reviewed
set, so the counts compare rankings and nothing else.

Development split: the rounds reports of the dev problems (digits/mlp, mnist/mlp; noise seeds
0-1, as for the suspect ranking). The choice: the candidate that is best (ties included) in the
most dev settings, then the highest mean fraction of decisions on a flip. The test split (the
cnn problems, seeds 2-4) is reported beside it and never chosen on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..audit.round_signals import out_of_sample_loss
from ..audit.rounds import (
    ROUND_RANKINGS,
    Round,
    labels_at,
    parent_scores,
    reviewed_at,
    round_queue,
    round_scores,
)
from ..audit.store import DecisionLog
from ..data.registry import Problem

#: What each round ranking (audit.rounds.ROUND_RANKINGS) orders by, in the page's words
QUEUE_TEXT = {
    "checkpoint_loss": "the retrained model's class-normalised loss over its training "
                       "checkpoints",
    "checkpoint_loss+parent": "the mean rank of the retrained model's class-normalised "
                              "checkpoint loss and the previous round's queue scores",
    "parent": "the previous round's queue scores (round 1: the default ranking)",
    "cv2_loss": "the class-normalised loss of the round's label under 2-fold models that never "
                "saw the example",
    "cv2_loss+parent": "the mean rank of the 2-fold out-of-sample class-normalised loss and the "
                       "previous round's queue scores",
    "cv2_loss+checkpoint_loss": "the mean rank of the 2-fold out-of-sample class-normalised loss "
                                "and the retrained model's class-normalised checkpoint loss",
    "cv2_loss+checkpoint_loss+parent": "the mean rank of the 2-fold out-of-sample "
                                       "class-normalised loss, the retrained model's "
                                       "class-normalised checkpoint loss and the previous "
                                       "round's queue scores",
}
EARLIER_QUEUE_RANKING = "checkpoint_loss"  # the later rounds' ranking of the older folders
DEV_PROBLEMS = (("digits", "mlp"), ("mnist", "mlp"))
DEV_SEEDS = (0, 1)


def own_scores(rnd: Round) -> torch.Tensor:
    """(N,) the round model's class-normalised checkpoint loss (rounds built before it was kept
    on its own stored it as scores.npy, their queue ranking)."""
    path = rnd.folder / "checkpoint_loss.npy"
    if not path.is_file():
        if rnd.meta.get("queue_ranking") != EARLIER_QUEUE_RANKING:
            raise FileNotFoundError(f"{path} is missing")
        path = rnd.folder / "scores.npy"
    return torch.from_numpy(np.load(path))


def candidate_flips(problem: Problem, root: Path, rnd: Round, log: DecisionLog, todo: int,
                    true: torch.Tensor) -> dict[str, int]:
    """ranking -> flipped examples among the `todo` first of its queue for round `rnd` (under
    `root`), with what the log had reviewed when the round opened."""
    labels, removed = labels_at(log, rnd.log_version)
    excluded = removed | reviewed_at(log, rnd.log_version)
    flipped = labels != true
    own = own_scores(rnd)
    parent = lazy(lambda: parent_scores(problem, root, rnd.parent))
    cv2 = lazy(lambda: cv2_scores(problem, rnd, root.parent / f"cv2_loss_round{rnd.number}.npy"))
    out = {}
    for name in ROUND_RANKINGS:
        order = round_queue(round_scores(name, own, parent, cv2), excluded, todo)
        out[name] = int(flipped[order].sum())
    return out


def cv2_scores(problem: Problem, rnd: Round, cache: Path) -> torch.Tensor:
    """(N,) round `rnd`'s out-of-sample loss ("cv2_loss"): the round's own when its ranking
    kept one, else computed once and cached at `cache`."""
    for path in (rnd.folder / "cv2_loss.npy", cache):
        if path.is_file():
            return torch.from_numpy(np.load(path))
    scores = out_of_sample_loss(problem, rnd.labels, rnd.removed)
    tmp = cache.with_suffix(".tmp.npy")
    np.save(tmp, scores.numpy())
    tmp.replace(cache)
    return scores


def lazy(make):
    """A callable returning make()'s value, computed at the first call only."""
    value = []

    def get():
        if not value:
            value.append(make())
        return value[0]
    return get


def candidate_fractions(seeds: list[dict]) -> dict[str, float] | None:
    """ranking -> the mean over seeds and rounds after the first of the fraction of the round's
    decisions on a flip (run_seed results), for the rankings every such round counted (seeds
    run before a ranking was a candidate did not count it); None where no app round counted."""
    rows = [r for s in seeds for r in s["queues"].get("app", []) if "queue_candidates" in r]
    if not rows:
        return None
    return {k: float(np.mean([r["queue_candidates"][k] / r["decisions"] for r in rows]))
            for k in rows[0]["queue_candidates"]
            if all(k in r["queue_candidates"] for r in rows)}


def ranking_table(reports: list[dict]) -> dict[str, dict[str, float]]:
    """Setting name -> its report's candidate_fractions, for the reports that have them."""
    out = {}
    for rep in reports:
        s, fractions = rep["setting"], rep["derived"].get("queue_candidates")
        if fractions:
            out[f"{s['dataset']}/{s['model']} {s['noise']:g} {s['noise_kind']}"] = fractions
    return out


def choose(table: dict) -> str | None:
    """The dev choice among the rankings every setting counted: best (ties included) in the
    most settings, then the highest mean."""
    if not table:
        return None
    names = [k for k in next(iter(table.values())) if all(k in row for row in table.values())]
    wins = {k: sum(row[k] >= max(row[n] for n in names) for row in table.values())
            for k in names}
    mean = {k: float(np.mean([row[k] for row in table.values()])) for k in names}
    return max(names, key=lambda k: (wins[k], mean[k]))
