"""Leaving the next suspects out of the last retrain: measured beside the app, not used by it.

After the app queue's last round (evaluation.cleaning_rounds.run_queue), the recipe is trained
again on that round's labels (same seed and schedule), leaving out, besides the removed
examples, the f x N examples at the top of the retrained round's own queue scores (scores.npy)
among those neither reviewed nor removed, for each f in PRUNE_FRACTIONS: confident learning's
prune-and-retrain step applied to the examples the annotator has not reached. Nothing is
deleted or relabelled: the left-out examples stay in the data and in the next queue. Per
fraction: the test accuracy, how many examples were left out and how many of them carry a
flipped label. Cached per round as pruned_round<n>.json beside the rounds (resumable).

It costs one training of the recipe per fraction. The app's retrain does not do it: a default
would be chosen on the development split and reported on the test split first.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..artifacts import write_json
from ..audit.rounds import Round, reviewed_at, round_queue, train_recipe
from ..audit.store import DecisionLog
from ..data.registry import Problem
from ..data.training import accuracy
from ..progress import Progress, silent

PRUNE_FRACTIONS = (0.02, 0.05, 0.1)


def pruned_retrain_accuracy(problem: Problem, labels: torch.Tensor, left_out: torch.Tensor,
                            progress: Progress = silent) -> float:
    """Test accuracy of the recipe trained on `labels` without the `left_out` (N,) examples."""
    return accuracy(train_recipe(problem, labels, left_out, progress), problem.test)


def pruned_retrains(problem: Problem, rnd: Round, log: DecisionLog, true: torch.Tensor,
                    cache: Path, fractions: tuple[float, ...] = PRUNE_FRACTIONS,
                    progress: Progress = silent) -> dict[str, dict]:
    """fraction (as text) -> {left_out, flips_left_out, accuracy} for the retrain of round
    `rnd`'s labels that also leaves out the top fraction x N of its unreviewed queue."""
    path = Path(cache) / f"pruned_round{rnd.number}.json"
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):
        done = {}
    labels, removed = rnd.labels, rnd.removed  # the log replayed up to the round's version
    scores = torch.from_numpy(np.load(rnd.folder / "scores.npy"))
    order = round_queue(scores, removed | reviewed_at(log, rnd.log_version), len(labels))
    for j, fraction in enumerate(fractions):
        key = f"{fraction:g}"
        if key in done:
            continue
        progress(j, len(fractions), f"retrain leaving out the next {key} x N suspects")
        top = order[:round(fraction * len(labels))]
        left_out = removed.clone()
        left_out[top] = True
        done[key] = {"left_out": len(top),
                     "flips_left_out": int((labels[top] != true[top]).sum()),
                     "accuracy": pruned_retrain_accuracy(problem, labels, left_out, progress)}
        write_json(path, done)
    progress(len(fractions), len(fractions), "pruned retrains")
    return {f"{f:g}": done[f"{f:g}"] for f in fractions}


def pruning_figures(seeds: list[dict]) -> dict | None:
    """fraction -> mean gap closed by the pruned retrain over the seeds that measured it
    ("seeds"; reports run before this measurement kept seeds without it), with the plain
    retrain's mean over the same seeds ("plain") and the share of the left-out examples that
    were flipped; only fractions every such seed measured. None where no seed measured any."""
    measured = [s for s in seeds if "pruned_retrains" in s.get("queues", {}).get("app", [{}])[-1]]
    if not measured:
        return None
    rows = [s["queues"]["app"][-1] for s in measured]
    keys = [k for k in rows[0]["pruned_retrains"] if all(k in r["pruned_retrains"] for r in rows)]
    out = {"seeds": [s["seed"] for s in measured],
           "plain": float(np.mean([r["gap_closed_retrained"] for r in rows]))}
    for k in keys:
        out[k] = float(np.mean([r["pruned_retrains"][k]["gap_closed"] for r in rows]))
        out[f"{k}_flips_left_out"] = float(np.mean(
            [r["pruned_retrains"][k]["flips_left_out"] / r["pruned_retrains"][k]["left_out"]
             for r in rows]))
    return out
