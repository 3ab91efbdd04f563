"""The label a Review card suggests for a suspect (and Relabel's default), and the influence
evidence shown beside it.

A suggestion is never the given label: the most probable OTHER class under some probabilities
(`best_other`). The app uses the current model's ("model", app_api.suggested_label). Each rule
is measured by `evaluate mislabel` on the flipped examples of every noise kind (report key
"suggestion"; `evaluate suspects` averages them per split):
  model        the current model's probabilities
  dynamics     probabilities averaged over the training-dynamics checkpoints (audit.dynamics)
  cleanlab     out-of-sample probabilities (5-fold cross-validation), as cleanlab's argmax
  evidence     the class whose top-k index scores on the example's loss under that class sum
               highest (the old rule: those scores grow with the loss gradient, so the classes
               the model finds least likely get the most support)
  evidence_normalised  the same with each class's scores divided by their standard deviation
               over the training set (classes compare on one scale)
"""

from __future__ import annotations

import numpy as np
import torch

from ..attribution.index import AttributionIndex, query_vector
from ..data.datasets import ImageDataset


def best_other(probs: torch.Tensor | np.ndarray, given: torch.Tensor | np.ndarray) -> np.ndarray:
    """(n,) the most probable class other than each example's given label; probs (n, K)."""
    p = np.array(probs, dtype=np.float64, copy=True).reshape(len(given), -1)
    p[np.arange(len(p)), np.asarray(given, dtype=np.int64)] = -np.inf
    return p.argmax(1)


def class_scores(index: AttributionIndex, train: ImageDataset, i: int) -> torch.Tensor:
    """(K, N) index scores of every training example on example i's loss under each class c
    (K query vectors, one pass over the index); example i's own column is NaN."""
    x = train.tensor([i])[0]
    queries = torch.stack([query_vector(index, x, c) for c in range(train.num_classes)])
    scores = index.projection.scores(queries, index.vectors).double()
    scores[:, i] = float("nan")
    return scores


def class_support(scores: torch.Tensor, k: int = 8, normalise: bool = True) -> np.ndarray:
    """(K,) support for each class: the sum of its k largest positive scores, each class's
    scores divided by their standard deviation when `normalise`."""
    if normalise:
        scale = scores.nan_to_num(0.0).std(1, keepdim=True).clamp_min(1e-30)
        scores = scores / scale
    top = scores.nan_to_num(-float("inf")).topk(k, dim=1).values
    return top.clamp_min(0).sum(1).numpy()
