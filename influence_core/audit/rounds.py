"""Cleaning rounds: retrain on the reviewed labels, then review the retrained model.

Round 1 is the recipe's own model (data.training.checkpoint_dir). `retrain_round` snapshots the
decision log, applies its active edits to the base training labels (relabels) and leaves out the
removed examples, trains the same recipe (same seed, same schedule) on that set, and builds the
new model's artifacts: its EK-FAC attribution index (attribution.precompute, keyed by the model's
hash) and its suspect queue. That model is round n + 1.

Storage: <root>/<n>/ with model.pt, labels.npy (N,) the labels it was trained on, removed.npy
(N,) bool, queue.npy (the suspect queue, most suspect first), scores.npy (N,) its ranking's
scores and meta.json {round, log_version, parent, log, config, test_accuracy, num_train, index,
reviewed, queue_ranking}. The default root
is <the model's checkpoint folder>/rounds/<log file stem>: one lineage of rounds per decision log.
A round folder is built under <root>/.tmp-<n>-<pid>-<random>, every file fsynced, then renamed to
<root>/<n> (one atomic rename, the parent directory fsynced): a round is either complete or
absent. A run killed mid-way leaves only a temporary folder, which no reader lists and the next
retrain deletes; the rerun redoes the round (training is deterministic, precompute resumes).

ONE decision log holds every round's decisions (indices are always base training indices, labels
absolute): a retrain only reads it (the round's log_version is the newest id it read), so nothing
is lost or rewritten, and the edited training set of any round is a replay of the log up to that
round's log_version. A round's session (audit.session, `round_of`) applies as its Newton step only
the edits made since: an example relabelled again moves from the round's label to the new one;
an example removed in an earlier round is outside the round's model (its state marks it
removed), and a later decision on it (an undo of the removal) takes effect at the next retrain.
Approximation: the round session fits its curvature, and the Newton step counts n, over all N
examples, those removed in earlier rounds included (they are at most the reviewed budget).

The round queue ranks by QUEUE_RANKING, one of ROUND_RANKINGS: "checkpoint_loss" is the loss of
each example's round label summed over 5 checkpoints of the round's own training (steps T/16, T/8,
T/4, T/2, T), z-scored within each given class (checkpoint_loss.npy); "parent" is the previous
round's queue scores (round 1: the default ranking, audit.suspects.DEFAULT_SIGNAL); "cv2_loss" is
the loss of each example's round label under models that never saw it (2-fold, z-scored within
each given class: audit.round_signals; it costs about one more retrain, made only when
QUEUE_RANKING uses it, and is kept as cv2_loss.npy); a '+' takes the mean of their normalised
ranks. The choice is made on the development split of the cleaning-rounds evaluation
(docs/benchmarks.md). The queue covers the examples
neither reviewed (any active decision, keep included) nor removed, most suspect first;
scores.npy keeps every example's score, so a longer queue is a sort away.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..attribution.precompute import precompute
from ..config import EKFACConfig, IndexConfig
from ..data.datasets import ImageDataset, subset_mask
from ..data.models import build_model, load_checkpoint
from ..data.registry import Problem
from ..data.training import (
    accuracy,
    checkpoint_dir,
    predict_logits,
    snapshot_steps,
    total_steps,
    train_model,
)
from ..progress import Progress, silent
from .round_files import commit_round, remove_stale
from .round_signals import out_of_sample_loss
from .session import AuditSession, open_session
from .signals import combine, rank_mean
from .store import REMOVED, DecisionLog, active_decisions, edits
from .suspects import DEFAULT_SIGNAL, RANKINGS, suspect_scores, training_set

QUEUE_SIZE = 500  # suspects in a round's queue (app_api.QUEUE_SIZE for round 1)
ROUND_RANKINGS = ("checkpoint_loss", "checkpoint_loss+parent", "parent", "cv2_loss",
                  "cv2_loss+parent", "cv2_loss+checkpoint_loss", "cv2_loss+checkpoint_loss+parent")
QUEUE_RANKING = "checkpoint_loss+parent"  # the ROUND_RANKINGS entry ordering a round's queue
QUEUE_CHECKPOINTS = 5  # geometrically spaced checkpoints of the round's training it sums over
BASE_ROUND = 1  # the recipe's own model


@dataclass(frozen=True)
class Round:
    """One complete round: its folder and what it was built from."""

    number: int  # 2, 3, ... (1 is the base model, which has no folder)
    folder: Path
    log_version: int  # the newest decision id the retrain read
    parent: int  # the round whose reviewed labels it continued (1: the base model)
    labels: torch.Tensor  # (N,) labels it was trained on (relabels applied)
    removed: torch.Tensor  # (N,) bool: left out of its training
    queue: torch.Tensor  # (k,) its suspect queue, most suspect first
    meta: dict


def rounds_root(problem: Problem, log_path: Path) -> Path:
    """<checkpoint folder>/rounds/<log stem>: where the rounds of problem's model that the log
    at `log_path` records live."""
    return checkpoint_dir(problem.config) / "rounds" / Path(log_path).stem


def list_rounds(root: Path) -> list[Round]:
    """The complete rounds under `root`, in order (temporary folders are never listed)."""
    if not root.is_dir():
        return []
    numbers = sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    return [load_round(root / str(n)) for n in numbers]


def load_round(folder: Path) -> Round:
    meta = json.loads((folder / "meta.json").read_text())
    arrays = {k: torch.from_numpy(np.load(folder / f"{k}.npy")) for k in
              ("labels", "removed", "queue")}
    return Round(int(meta["round"]), folder, int(meta["log_version"]), int(meta["parent"]),
                 arrays["labels"].long(), arrays["removed"].bool(), arrays["queue"].long(), meta)


def labels_at(log: DecisionLog, version: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """((N,) labels, (N,) removed mask) of the edited training set: the log's active decisions
    with id <= version (None: all) replayed on the base labels."""
    rows = [d for d in log.decisions() if version is None or d.id <= version]
    labels = torch.tensor(log.labels, dtype=torch.long)
    removed = torch.zeros(len(labels), dtype=torch.bool)
    for i, y in edits(rows, log.labels).items():
        if y is REMOVED:
            removed[i] = True
        else:
            labels[i] = y
    return labels, removed


def reviewed_at(log: DecisionLog, version: int | None = None) -> torch.Tensor:
    """(N,) bool: examples with an active decision (relabel, remove, keep) with id <= version."""
    rows = [d for d in log.decisions() if version is None or d.id <= version]
    done = torch.zeros(len(log.labels), dtype=torch.bool)
    done[[d.index for d in active_decisions(rows)]] = True
    return done


def round_training_set(problem: Problem, labels: torch.Tensor, removed: torch.Tensor
                       ) -> tuple[ImageDataset, torch.Tensor]:
    """(the training split with `labels`, the indices a retrain trains on): every example not
    removed (within the recipe's seeded subset, when it trains on one)."""
    keep = ~removed
    cfg = problem.config
    if cfg.subset_seed >= 0:
        keep &= subset_mask(len(labels), cfg.subset_fraction, cfg.subset_seed)
    return problem.train.with_labels(labels), torch.nonzero(keep)[:, 0]


def round_model(problem: Problem, folder: Path) -> nn.Module:
    torch.manual_seed(problem.config.seed)
    model = build_model(problem.config.model, problem.train.shape, problem.train.num_classes)
    return load_checkpoint(model, folder / "model.pt").eval()


def round_problem(problem: Problem, rnd: Round | None) -> Problem:
    """The Problem of a round: its model, its training labels (all N examples, removed ones
    included, so indices stay those of the log); the base problem for None. Its meta names the
    round's model.pt as its `checkpoint`: it is not the recipe's own run, so nothing reads that
    run's cached trajectories or cross-validations for it."""
    if rnd is None:
        return problem
    meta = {**problem.meta, "round": rnd.number, "checkpoint": str(rnd.folder / "model.pt"),
            "log_version": rnd.log_version, "test_accuracy": rnd.meta["test_accuracy"]}
    return dataclasses.replace(problem, model=round_model(problem, rnd.folder),
                               train=problem.train.with_labels(rnd.labels), meta=meta)


def round_queue(scores: torch.Tensor, excluded: torch.Tensor,
                size: int = QUEUE_SIZE) -> torch.Tensor:
    """(k,) the `size` examples with the largest suspect scores (N,) among those not
    `excluded` (N,) bool, most suspect first."""
    candidates = torch.nonzero(~excluded)[:, 0]
    ranked = torch.as_tensor(scores, dtype=torch.float64)[candidates]
    order = torch.argsort(ranked, descending=True, stable=True)[:size]
    return candidates[order]


def round_scores(ranking: str, own: torch.Tensor, parent, cv2=None) -> torch.Tensor:
    """(N,) queue scores of ROUND_RANKINGS entry `ranking` from the round's own class-normalised
    checkpoint loss, `parent` (the previous round's scores) and `cv2` (the round's
    round_signals.out_of_sample_loss); `parent` and `cv2` may be callables returning them, called
    only when the ranking needs them."""
    terms = ranking.split("+")
    given = {"checkpoint_loss": own, "parent": parent, "cv2_loss": cv2}
    if any(t not in given for t in terms):
        raise ValueError(f"unknown round ranking {ranking!r}; choose from {ROUND_RANKINGS}")
    parts = [given[t]() if callable(given[t]) else given[t] for t in terms]
    if any(p is None for p in parts):
        raise ValueError(f"round ranking {ranking!r} needs a signal that was not given")
    return parts[0] if len(parts) == 1 else rank_mean(*parts)


def parent_scores(problem: Problem, root: Path, parent: int,
                  progress: Progress = silent) -> torch.Tensor:
    """(N,) queue scores of round `parent` under `root`; for the base model (round 1) the
    default ranking's, with the lowest score for examples outside the recipe's subset."""
    if parent != BASE_ROUND:
        return torch.from_numpy(np.load(Path(root) / str(parent) / "scores.npy"))
    scores = suspect_scores(problem, DEFAULT_SIGNAL, progress=progress).double()
    _, _, idx = training_set(problem)
    full = torch.full((len(problem.train),), float(scores.min()), dtype=torch.float64)
    full[idx] = scores
    return full


def open_round_session(problem: Problem, log_path: Path, rnd: Round | None,
                       method: str = "ekfac", progress: Progress = silent,
                       damping: float | None = None) -> AuditSession:
    """The audit session of a round (None: the base model, whole training set as its queue):
    its model, its labels, the log at `log_path` (opened with the base labels), its queue, the
    examples it never trained on excluded from the Newton step."""
    if rnd is None:
        return open_session(problem, method, log_path, progress, damping)
    return open_session(round_problem(problem, rnd), method, log_path, progress, damping,
                        log_labels=problem.train.labels, suspects=rnd.queue,
                        excluded=rnd.removed,
                        ranking=rnd.meta.get("queue_ranking", QUEUE_RANKING))


def retrain_round(problem: Problem, log: DecisionLog, root: Path | None = None,
                  progress: Progress = silent, queue_size: int = QUEUE_SIZE,
                  build_index: bool = True) -> Round:
    """Train problem's recipe on the log's edited training set and store it, with its index
    and queue, as the next round under `root` (default rounds_root). Returns the round that
    already holds the log's current version when there is one (nothing new to learn).
    Without `build_index` the round has no attribution index (meta "index" None): enough for
    its queue and its Newton step, not for the app's Explore page or its evidence.
    Raises ValueError when the log has no decision yet, or for a user's own checkpoint (there
    is no recipe run to repeat)."""
    if problem.meta.get("checkpoint"):
        raise ValueError("retraining needs the recipe's own model, not a loaded checkpoint")
    root = Path(root) if root is not None else rounds_root(problem, log.path)
    version = log.version()  # every later read stops here: decisions made meanwhile wait
    done = list_rounds(root)
    if done and done[-1].log_version >= version:
        return done[-1]
    if version == 0:
        raise ValueError("nothing reviewed yet: the log has no decision to retrain on")
    remove_stale(root)
    number, parent = (done[-1].number + 1, done[-1].number) if done else (2, BASE_ROUND)
    labels, removed = labels_at(log, version)
    model, test_accuracy, own = _train(problem, labels, removed, progress)
    cv2 = (out_of_sample_loss(problem, labels, removed, progress=progress)
           if "cv2_loss" in QUEUE_RANKING.split("+") else None)
    scores = round_scores(QUEUE_RANKING, own,
                          lambda: parent_scores(problem, root, parent, progress), cv2)
    rnd = _with_model(problem, model, labels)
    index = (precompute(rnd, "ekfac", EKFACConfig(), IndexConfig(), progress=progress)
             if build_index else None)
    queue = round_queue(scores, removed | reviewed_at(log, version), queue_size)
    meta = {"round": number, "log_version": version, "parent": parent, "log": str(log.path),
            "config": dataclasses.asdict(problem.config), "test_accuracy": test_accuracy,
            "num_train": int((~removed).sum()),
            "index": str(index) if index is not None else None,
            "reviewed": int(reviewed_at(log, version).sum()), "queue_ranking": QUEUE_RANKING}
    arrays = {"labels": labels, "removed": removed, "queue": queue, "scores": scores,
              "checkpoint_loss": own, **({"cv2_loss": cv2} if cv2 is not None else {})}
    return load_round(commit_round(root, number, model, arrays, meta))


def _with_model(problem: Problem, model: nn.Module, labels: torch.Tensor) -> Problem:
    return dataclasses.replace(problem, model=model, train=problem.train.with_labels(labels))


def train_recipe(problem: Problem, labels: torch.Tensor, left_out: torch.Tensor,
                 progress: Progress = silent, keep=None) -> nn.Module:
    """The recipe (same seed, initialisation and batch order) trained on `labels` without the
    `left_out` (N,) examples; `keep(step, model)` is train_model's checkpoint callback."""
    cfg = problem.config
    data, indices = round_training_set(problem, labels, left_out)
    torch.manual_seed(cfg.seed)  # the recipe's initialisation
    model = build_model(cfg.model, data.shape, data.num_classes)
    return train_model(model, data, cfg, indices, progress, keep).eval()


def _train(problem: Problem, labels: torch.Tensor, removed: torch.Tensor,
           progress: Progress) -> tuple[nn.Module, float, torch.Tensor]:
    """The round's model, its test accuracy and (N,) class-normalised checkpoint loss."""
    cfg = problem.config
    data, indices = round_training_set(problem, labels, removed)
    steps = snapshot_steps(total_steps(cfg, len(indices)), QUEUE_CHECKPOINTS, even=False)
    states: dict[int, dict] = {}

    def keep(step: int, net: nn.Module) -> None:
        if step in steps:
            states[step] = copy.deepcopy(net.state_dict())

    def fresh() -> nn.Module:
        torch.manual_seed(cfg.seed)  # the recipe's initialisation
        return build_model(cfg.model, data.shape, data.num_classes)

    model = train_recipe(problem, labels, removed, progress, keep)
    loss = torch.zeros(len(labels), dtype=torch.float64)
    for step in steps:
        net = fresh()
        net.load_state_dict(states[step])
        logits = predict_logits(net.eval(), data)
        loss += nn.functional.cross_entropy(logits, data.labels, reduction="none").double()
    scores = combine(RANKINGS["checkpoint_loss"].signal, {"checkpoint_loss": loss}, labels)
    return model.eval(), accuracy(model, problem.test), scores
