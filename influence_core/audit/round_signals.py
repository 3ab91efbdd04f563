"""Out-of-sample signals of a round's training set: the recipe trained on the other folds.

A retrained round model has fitted the labels it was trained on, reviewed or not, so its own loss
says little about the labels it memorised. A model that never saw an example does not have that
problem: `out_of_sample_probs` trains the recipe (same seed and schedule) once per fold on the
round's training set without that fold and predicts the held-out fold. Each fold costs one
training on (folds - 1) / folds of the data, so 2 folds cost about one retrain.

The fold of example i is randperm(N, seed)[i] % folds over all N training indices (seed: the
recipe's), so a set without removed examples splits as cross-validation always has here; removed
examples (and those outside the recipe's subset) are neither trained on nor predicted.
"""

from __future__ import annotations

import torch

from ..data.datasets import subset
from ..data.models import build_model
from ..data.registry import Problem
from ..data.training import predict_logits, train_model
from ..progress import Progress, silent
from .signals import class_normalised

CV_FOLDS = 2  # the round rankings' "cv2_loss": one retrain's worth of extra training


def out_of_sample_probs(problem: Problem, labels: torch.Tensor, removed: torch.Tensor,
                        folds: int, progress: Progress = silent) -> torch.Tensor:
    """(N, K) float64: each trained-on example's class probabilities under the recipe trained
    on the other folds with `labels`; rows of examples left out of training stay zero."""
    from .rounds import round_training_set

    cfg = problem.config
    data, indices = round_training_set(problem, labels, removed)
    kept = torch.zeros(len(labels), dtype=torch.bool)
    kept[indices] = True
    fold = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.seed)) % folds
    probs = torch.zeros(len(labels), data.num_classes, dtype=torch.float64)
    for k in range(folds):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, data.shape, data.num_classes)
        train_model(model, data, cfg, torch.nonzero(kept & (fold != k))[:, 0],
                    _fold_progress(progress, k, folds))
        held = torch.nonzero(kept & (fold == k))[:, 0]
        probs[held] = predict_logits(model, subset(data, held)).double().softmax(1)
    return probs


def out_of_sample_loss(problem: Problem, labels: torch.Tensor, removed: torch.Tensor,
                       folds: int = CV_FOLDS, progress: Progress = silent) -> torch.Tensor:
    """(N,) the loss of each example's label under out_of_sample_probs, z-scored within each
    given class over the trained-on examples (the round ranking "cv2_loss"); examples left out
    of training score the lowest of all."""
    probs = out_of_sample_probs(problem, labels, removed, folds, progress)
    kept = probs.sum(1) > 0
    loss = -probs[torch.arange(len(labels)), labels].clamp_min(1e-12).log()
    out = torch.zeros(len(labels), dtype=torch.float64)
    if kept.any():
        out[kept] = class_normalised(loss[kept], labels[kept])
        out[~kept] = float(out[kept].min()) - 1.0
    return out


def _fold_progress(progress: Progress, k: int, folds: int) -> Progress:
    def report(done: int, total: int, what: str = "") -> None:
        progress(done, total, f"out-of-sample fold {k + 1} of {folds}: {what}")
    return report

