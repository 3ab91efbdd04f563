"""Suspect rankings for mislabelled training examples: which labels to inspect first.

Every signal is an (n,) tensor over the training examples the model was trained on (the seeded
subset when cfg.subset_seed >= 0), HIGHER = MORE SUSPECT:
  loss                  cross-entropy of the given label under the final model
  margin                minus the given label's margin
  self_influence        EK-FAC self-influence grad L^T (G + lambda I)^-1 grad L
  checkpoint_self_influence   self-influence summed over S checkpoints along the trajectory
  checkpoint_loss       loss summed over the same checkpoints (area under the loss curve)
  cv_loss               out-of-sample loss from K-fold cross-validation (cleanlab's input)
  cv2_loss              the same from 2-fold cross-validation (one training's worth of cost)
  self_confidence       1 - out-of-sample probability of the given label (cleanlab's
                        self-confidence; the same order as cv_loss)
  aum, forgetting, dynamics_loss   training dynamics over 8 even checkpoints (dynamics.py)
The checkpoint and dynamics signals read checkpoints the model's own training kept
(data.training.TRAJECTORIES): they cost no training. The cv signals cost K trainings on
(K-1)/K of the data each.
Combinations: `class_normalised(s, labels)` (z-score within each given class) and `rank_mean`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import EKFACConfig, artifacts_root, config_hash
from ..curvature import fit_curvature
from ..curvature.gradients import TrackedModel
from ..curvature.task import ClassificationTask, margin
from ..data.datasets import ImageDataset, subset, subset_mask
from ..data.models import build_model, load_checkpoint
from ..data.registry import Problem
from ..data.training import (
    accuracy,
    predict_logits,
    save_atomic,
    snapshot_path,
    snapshot_steps,
    total_steps,
    train_model,
)
from ..progress import Progress, silent
from .dynamics import Dynamics
from .logits_cache import reporting, snapshot_logits
from .signals import FIT_GAP, FIT_GATE, base_names, combine, gate_choice

DYNAMICS_POINTS = 8  # checkpoints of the training-dynamics run (aum, forgetting, dynamics_loss)

#: The default suspect ranking, the fit gate (signals.FIT_GATE). Chosen on the development
#: split as the best candidate within the default's training budget
#: (evaluation.suspect_selection; docs/reports/suspects_dev.json), reported on the test split.
DEFAULT_SIGNAL = FIT_GATE


@dataclass(frozen=True)
class Ranking:
    """A suspect ranking the Review page offers: a signal expression (see `combine`), and one
    line saying what it measures."""

    signal: str
    help: str


#: The rankings a user can choose in Review (key -> Ranking); "default" is the queue's default.
RANKINGS: dict[str, Ranking] = {
    "default": Ranking(DEFAULT_SIGNAL, "our default: the training loss unless the model has "
                       "memorised its labels (training accuracy > test accuracy + "
                       f"{100 * FIT_GAP:.1f} points), then out-of-sample (2-fold), checkpoint "
                       "and training-run losses, rank-averaged"),
    "self_influence": Ranking("self_influence", "EK-FAC self-influence (the paper's): how "
                              "strongly the example's own label pulls the model"),
    "loss": Ranking("loss", "training loss of the given label under the model: the cheapest"),
    "checkpoint_loss": Ranking("classnorm:checkpoint_loss", "loss of the given label summed "
                               "over 5 checkpoints of training, compared within each given "
                               "class: no extra training (a retrained round's queue)"),
    "cleanlab": Ranking("cv_loss", "cleanlab-style self-confidence: how unlikely the given label "
                        "is out of sample (5-fold cross-validation)"),
}


def training_set(problem: Problem) -> tuple[ImageDataset, torch.Tensor, torch.Tensor]:
    """(the examples the model was trained on, their flip mask, their indices in problem.train)."""
    cfg, train = problem.config, problem.train
    if cfg.subset_seed < 0:
        return train, problem.flip_mask, torch.arange(len(train))
    idx = torch.nonzero(subset_mask(len(train), cfg.subset_fraction, cfg.subset_seed))[:, 0]
    return subset(train, idx), problem.flip_mask[idx], idx


def _cached_train(problem: Problem, tag: str, data: ImageDataset, indices: torch.Tensor | None,
                  snapshots: int = 1, progress: Progress = silent, even: bool = False,
                  train: bool = True) -> list[nn.Module]:
    """Train problem.config's recipe on data[indices] from the same init, keeping `snapshots`
    checkpoints at geometrically spaced steps T/2^(S-1), ..., T/2, T (early ones see the data
    before memorisation; the last is the final model), or with `even` at T/S, 2T/S, ..., T
    (data.training.snapshot_steps); cached under artifacts/suspects. On the whole training set
    (indices None) this is the recipe's own run: the checkpoints it kept are read instead when
    they are all there (data.training.TRAJECTORIES)."""
    cfg = problem.config
    n = len(data) if indices is None else len(indices)
    steps = snapshot_steps(total_steps(cfg, n), snapshots, even)

    def fresh() -> nn.Module:
        torch.manual_seed(cfg.seed)
        return build_model(cfg.model, data.shape, data.num_classes)

    own = [snapshot_path(cfg, s) for s in steps]
    if indices is None and all(p.is_file() for p in own):
        return [_loaded(fresh(), p) for p in own]
    folder = artifacts_root() / "suspects" / f"{config_hash(cfg)}-{tag}"
    paths = [folder / f"snapshot{k}.pt" for k in range(snapshots)]
    if all(p.is_file() for p in paths):
        return [_loaded(fresh(), p) for p in paths]
    if not train:  # only what is kept: nothing
        return []
    model, states = fresh(), {}

    def keep(step: int, net: nn.Module) -> None:
        if step in steps:
            states[step] = copy.deepcopy(net.state_dict())

    def report(step: int, total: int, what: str) -> None:
        progress(step, total, f"{what}, {_describe(tag)}")

    train_model(model, data, cfg, indices, report, keep)
    folder.mkdir(parents=True, exist_ok=True)
    for p, s in zip(paths, steps):
        save_atomic(states[s], p)
    return [_loaded(fresh(), p) for p in paths]


def _loaded(model: nn.Module, path) -> nn.Module:
    model = load_checkpoint(model, path).eval()
    model.checkpoint_file = str(path)  # snapshot_logits' key: the file, shared by the signals
    return model


def _describe(tag: str) -> str:
    """A training's purpose in words, for progress bars: 'cv5-0' -> 'cross-validation model 1
    of 5'."""
    if tag.startswith("cv"):
        folds, k = tag[2:].split("-")
        return f"cross-validation model {int(k) + 1} of {folds}"
    return {"even": "training-dynamics checkpoints", "trajg": "trajectory checkpoints"}.get(
        tag.rstrip("0123456789"), tag)


def trajectory(problem: Problem, snapshots: int = 5, progress: Progress = silent
               ) -> list[nn.Module]:
    """`snapshots` checkpoints along problem's own training run (same seed), at steps
    T/2^(S-1), ..., T/2, T."""
    data, _, _ = training_set(problem)
    return _cached_train(problem, f"trajg{snapshots}", data, None, snapshots, progress)


def run_checkpoints(problem: Problem, which: str, progress: Progress = silent,
                    train: bool = True) -> list[nn.Module]:
    """The checkpoints of problem's own training run that a probability source averages:
    "checkpoints" = the trajectory's (geometric), "dynamics" = the training dynamics' (even).
    Without `train`, only checkpoints already kept (else an empty list)."""
    data, _, _ = training_set(problem)
    if which == "checkpoints":
        return _cached_train(problem, "trajg5", data, None, 5, progress, train=train)
    return _cached_train(problem, f"even{DYNAMICS_POINTS}", data, None, DYNAMICS_POINTS,
                         progress, even=True, train=train)


_DYNAMICS: dict[tuple[str, int], Dynamics] = {}  # per process: (config hash, points)


def training_dynamics(problem: Problem, points: int = 8, progress: Progress = silent
                      ) -> Dynamics:
    """audit.dynamics over `points` evenly spaced checkpoints of problem's own training run."""
    key = (config_hash(problem.config), points)
    if key not in _DYNAMICS:
        data, _, _ = training_set(problem)
        models = (run_checkpoints(problem, "dynamics", progress) if points == DYNAMICS_POINTS
                  else _cached_train(problem, f"even{points}", data, None, points, progress,
                                     even=True))
        _DYNAMICS.clear()  # one problem's at a time: (P, n) tensors
        _DYNAMICS[key] = Dynamics.of(models, data, reporting(
            progress, "predictions of the training-dynamics checkpoints", len(models)))
    return _DYNAMICS[key]


def _folds(problem: Problem, folds: int, progress: Progress
           ) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """(model trained on the other folds, its training indices, held-out indices) per fold."""
    data, _, _ = training_set(problem)
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(123))
    out = []
    for k in range(folds):
        held = perm[k::folds]
        keep = torch.ones(len(data), dtype=torch.bool)
        keep[held] = False
        fit_idx = torch.nonzero(keep)[:, 0]
        model = _cached_train(problem, f"cv{folds}-{k}", data, fit_idx, progress=progress)[0]
        out.append((model, fit_idx, held))
    return out


def cross_validated_probs(problem: Problem, folds: int = 5, progress: Progress = silent
                          ) -> torch.Tensor:
    """(n, K) out-of-sample probabilities: example i is predicted by the model trained on the
    other folds (seeded split, problem's recipe, given labels)."""
    data, _, _ = training_set(problem)
    probs = torch.zeros(len(data), data.num_classes)
    for model, _, held in _folds(problem, folds, progress):
        probs[held] = snapshot_logits(model, subset(data, held)).softmax(1)
    return probs


def cross_validated_self_influence(problem: Problem, folds: int = 5, progress: Progress = silent
                                   ) -> torch.Tensor:
    """(n,) out-of-sample self-influence: grad L(z_i)^T (G_k + lambda I)^-1 grad L(z_i) under
    the model of the fold that held z_i out, G_k fitted (EK-FAC) on that fold's training data."""
    from ..attribution.scores import self_influence

    data, _, _ = training_set(problem)
    out = torch.zeros(len(data), dtype=torch.float64)
    task = ClassificationTask("loss")
    for model, fit_idx, held in _folds(problem, folds, progress):
        curv = fit_curvature("ekfac", TrackedModel(model), task, subset(data, fit_idx))
        out[held] = self_influence(curv, task, subset(data, held)).double()
    return out


def _loss(model: nn.Module, data: ImageDataset,
          logits_of: Callable[[nn.Module, ImageDataset], torch.Tensor] = snapshot_logits
          ) -> torch.Tensor:
    return nn.functional.cross_entropy(logits_of(model, data), data.labels, reduction="none")


def _checkpoint_loss(problem: Problem, snapshots: int, progress: Progress) -> torch.Tensor:
    data, _, _ = training_set(problem)
    models = trajectory(problem, snapshots, progress)
    logits_of = reporting(progress, "predictions of the trajectory checkpoints", len(models))
    return sum(_loss(m, data, logits_of) for m in models)


def _self_influence(model: nn.Module, data: ImageDataset, method: str = "ekfac") -> torch.Tensor:
    from ..attribution.scores import self_influence

    tracked, task = TrackedModel(model), ClassificationTask("loss")
    cfg = EKFACConfig() if method in ("ekfac", "kfac") else None
    return self_influence(fit_curvature(method, tracked, task, data, cfg), task, data)


def base_signals(problem: Problem, names: list[str], snapshots: int = 5, folds: int = 5,
                 progress: Progress = silent) -> dict[str, torch.Tensor]:
    """The named base signals (see the module docstring) for problem's training examples."""
    data, _, _ = training_set(problem)
    model = problem.model
    makers: dict[str, Callable[[], torch.Tensor]] = {
        "loss": lambda: nn.functional.cross_entropy(model_logits(problem, data, progress),
                                                    data.labels, reduction="none"),
        "margin": lambda: -margin(predict_logits(model, data), data.labels),
        "self_influence": lambda: _self_influence(model, data),
        "identity_self_influence": lambda: _self_influence(model, data, "identity"),
        "checkpoint_self_influence": lambda: sum(
            _self_influence(m, data) for m in trajectory(problem, snapshots, progress)),
        "checkpoint_loss": lambda: _checkpoint_loss(problem, snapshots, progress),
        "cv_self_influence": lambda: cross_validated_self_influence(problem, folds, progress),
        "cv_loss": lambda: -cross_validated_probs(problem, folds, progress)[
            torch.arange(len(data)), data.labels].clamp_min(1e-12).log(),
        "cv2_loss": lambda: -cross_validated_probs(problem, 2, progress)[
            torch.arange(len(data)), data.labels].clamp_min(1e-12).log(),
        "self_confidence": lambda: 1 - cross_validated_probs(problem, folds, progress)[
            torch.arange(len(data)), data.labels],
        "aum": lambda: training_dynamics(problem, DYNAMICS_POINTS, progress).aum(),
        "forgetting": lambda: training_dynamics(problem, DYNAMICS_POINTS, progress).forgetting(),
        "dynamics_loss": lambda: training_dynamics(problem, DYNAMICS_POINTS, progress).loss(),
    }
    unknown = set(names) - set(makers)
    if unknown:
        raise ValueError(f"unknown suspect signals {sorted(unknown)}; choose from {sorted(makers)}")
    return {n: makers[n]().detach().double() for n in names}


def suspect_scores(problem: Problem, signal: str = DEFAULT_SIGNAL, snapshots: int = 5,
                   folds: int = 5, progress: Progress = silent) -> torch.Tensor:
    """(n,) suspect score of each training example (higher = inspect first) for `signal`, an
    expression over the base signals (see `combine`). Extra trainings (trajectory snapshots,
    cross-validation folds) are cached by config, so a second call is fast.
    With a subset-trained problem, n = the subset size (see `training_set`)."""
    signal = resolve_signal(problem, signal, progress)
    data, _, _ = training_set(problem)
    base = base_signals(problem, base_names(signal), snapshots, folds, progress)
    return combine(signal, base, data.labels)


def model_logits(problem: Problem, data: ImageDataset, progress: Progress = silent
                 ) -> torch.Tensor:
    """problem.model's logits on `data`, stored beside the recipe's own checkpoint (a user's
    checkpoint or a round's model is simply evaluated: nothing is written beside it)."""
    own = not problem.meta.get("checkpoint") and Path(problem.checkpoint).is_file()
    logits_of = reporting(progress, "predictions of the model", 1,
                          str(problem.checkpoint) if own else None)
    return logits_of(problem.model, data)


def memorisation_gap(problem: Problem, progress: Progress = silent) -> float:
    """The model's accuracy on its given training labels minus its test accuracy (NaN without
    test images): how far it has fitted labels it could not have predicted."""
    data, _, _ = training_set(problem)
    train = (model_logits(problem, data, progress).argmax(1) == data.labels).double().mean()
    if not len(problem.test):
        return float("nan")
    test = problem.meta.get("test_accuracy")  # measured when the problem was loaded
    return float(train - (accuracy(problem.model, problem.test) if test is None else test))


def resolve_signal(problem: Problem, signal: str, progress: Progress = silent) -> str:
    """`signal`, or for the fit gate the signal it picks for problem's model (signals.FIT_GAP)."""
    return gate_choice(memorisation_gap(problem, progress)) if signal == FIT_GATE else signal
