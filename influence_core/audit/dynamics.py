"""Training dynamics: how each training example's given label fared along the model's own
training run, from `points` checkpoints at evenly spaced steps T/P, 2T/P, ..., T (one more
training of the recipe, same seed; suspects._cached_train caches it).

Signals (n,), HIGHER = MORE SUSPECT:
  aum          minus the area under the margin (Pleiss et al. 2020): the given label's margin
               logit_y - logsumexp_{c != y} logit_c, averaged over the checkpoints
  forgetting   forgetting events (Toneva et al. 2019): how often the prediction goes from the
               given label to another between consecutive checkpoints; an example never
               predicted as its label counts P events; ties broken by aum
  dynamics_loss  the given label's loss averaged over the checkpoints
and `mean_probs`, the class probabilities averaged over the checkpoints (the suggested label's
input: early checkpoints have not memorised a flipped label yet).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..curvature.task import margin
from ..data.datasets import ImageDataset
from ..data.training import predict_logits


@dataclass(frozen=True)
class Dynamics:
    margins: torch.Tensor  # (P, n) given-label margin at each checkpoint
    losses: torch.Tensor  # (P, n) given-label cross-entropy
    correct: torch.Tensor  # (P, n) bool: the checkpoint predicts the given label
    mean_probs: torch.Tensor  # (n, K) class probabilities averaged over the checkpoints

    @classmethod
    def of(cls, models: list[nn.Module], data: ImageDataset,
           logits_of: Callable[[nn.Module, ImageDataset], torch.Tensor] = predict_logits
           ) -> Dynamics:
        """The dynamics of `models` (checkpoints in training order) on `data`; `logits_of`
        computes a checkpoint's logits (logits_cache.snapshot_logits stores them)."""
        margins, losses, correct = [], [], []
        probs = torch.zeros(len(data), data.num_classes, dtype=torch.float64)
        for m in models:
            logits = logits_of(m, data).double()
            margins.append(margin(logits, data.labels))
            losses.append(nn.functional.cross_entropy(logits, data.labels, reduction="none"))
            correct.append(logits.argmax(1) == data.labels)
            probs += logits.softmax(1) / len(models)
        return cls(torch.stack(margins), torch.stack(losses), torch.stack(correct), probs)

    def aum(self) -> torch.Tensor:
        return -self.margins.mean(0)

    def forgetting(self) -> torch.Tensor:
        c = self.correct
        events = (c[:-1] & ~c[1:]).sum(0).double()
        never = ~c.any(0)
        events[never] = float(len(c))
        aum = self.aum()
        spread = (aum.max() - aum.min()).clamp_min(1e-12)
        return events + 0.5 * (aum - aum.min()) / spread  # ties broken by aum, within [0, 0.5]

    def loss(self) -> torch.Tensor:
        return self.losses.mean(0)
