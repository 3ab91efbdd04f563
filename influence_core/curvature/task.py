"""How to get outputs, per-example loss and the query measurement from (model, batch).

Losses are per example (reduction="none"); the caller sums or averages and says which.
Measurements are LOSS-LIKE (lower is better), so that a positive influence score always means
"up-weighting this training point lowers the query's measurement": helpful.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

MEASUREMENTS = ("loss", "margin")


class Task(ABC):
    """Subclass to audit another kind of model (Kronfluence's `Task`, torch-influence's
    `BaseObjective`): outputs are split from loss-on-outputs so that a Gauss-Newton G can be
    formed from the output Hessian of the loss."""

    def outputs(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)

    @abstractmethod
    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B,) per-example training loss."""

    @abstractmethod
    def measurement(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B,) loss-like query measurement f (lower is better)."""

    @abstractmethod
    def fisher_weights(self, outputs: torch.Tensor) -> torch.Tensor:
        """(B, K) predictive probabilities: the Gauss-Newton G is E_i sum_k p_ik g_ik g_ik^T
        with g_ik the gradient of the loss for pseudo-label k."""


class ClassificationTask(Task):
    """Cross-entropy training loss; measurement = the query's loss (default) or minus its
    correct-class margin m = logit_y - logsumexp_{c != y} logit_c (TRAK's, used for LDS)."""

    def __init__(self, measurement: str = "loss") -> None:
        if measurement not in MEASUREMENTS:
            raise ValueError(f"measurement must be one of {MEASUREMENTS}, got {measurement!r}")
        self.measurement_name = measurement

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, y, reduction="none")

    def measurement(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.measurement_name == "loss":
            return self.loss(outputs, y)
        return -margin(outputs, y)

    def fisher_weights(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.detach().softmax(dim=1)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) correct-class margin logit_y - logsumexp_{c != y} logit_c."""
    correct = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], float("-inf"))
    return correct - others.logsumexp(dim=1)
