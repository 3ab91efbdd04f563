"""Influence scores from a fitted curvature.

Convention (see README): score(q, i) = grad f(q)^T (G + lambda I)^-1 grad L(z_i), f a loss-like
measurement of query q. Positive: up-weighting z_i lowers f(q), so z_i is HELPFUL; negative:
HARMFUL. Removing z_i changes f(q) by about +score(q, i) / N. The paper's I_loss is minus this.
Self-influence(i) = grad L(z_i)^T (G + lambda I)^-1 grad L(z_i) >= 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..curvature.base import Curvature, iterate, model_dtype
from ..curvature.gradients import dot_with_layers, layer_grads, per_example_grads
from ..curvature.task import Task
from ..data.datasets import ImageDataset
from ..progress import Progress, silent


def query_gradients(curv: Curvature, task: Task, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(k, p) gradients of the measurement f of each query (x: (k, C, H, W), y: (k,))."""
    x = x.to(model_dtype(curv.tracked))
    pairs, _ = layer_grads(curv.tracked, x, lambda out: task.measurement(out, y))
    return per_example_grads(pairs)


def train_gradients(
    curv: Curvature, task: Task, train: ImageDataset, indices: torch.Tensor
) -> torch.Tensor:
    """(m, p) training-loss gradients of the given training examples."""
    x = train.tensor(indices).to(model_dtype(curv.tracked))
    pairs, _ = layer_grads(curv.tracked, x, lambda out: task.loss(out, train.labels[indices]))
    return per_example_grads(pairs)


def pairwise_influence(
    curv: Curvature, task: Task, query_x: torch.Tensor, query_y: torch.Tensor,
    train: ImageDataset, batch_size: int = 512, indices: torch.Tensor | None = None,
    progress: Progress = silent,
) -> torch.Tensor:
    """(k, N) scores of every training example (or `indices`) on each query.

    One IHVP per query, then one pass over the training set: per batch, the scores are
    g_i^T P_q a_i per layer (P_q the preconditioned query gradient), never forming DW_i."""
    precond = curv.tracked.split(curv.ihvp(query_gradients(curv, task, query_x, query_y)))
    dtype = model_dtype(curv.tracked)
    out = []
    for x, y, _ in iterate(train, batch_size, progress, "pairwise scores", indices, dtype):
        pairs, _ = layer_grads(curv.tracked, x, lambda o, y=y: task.loss(o, y))
        out.append(dot_with_layers(pairs, precond).detach())
    return torch.cat(out).T


def self_influence(
    curv: Curvature, task: Task, train: ImageDataset, batch_size: int = 512,
    indices: torch.Tensor | None = None, progress: Progress = silent,
) -> torch.Tensor:
    """(N,) grad L(z_i)^T (G + lambda I)^-1 grad L(z_i) for every training example. The forward
    and backward run in the model's dtype; layer inputs are captured in the dtype the curvature
    multiplies them in (curv.compute), which changes no result."""
    dtype = model_dtype(curv.tracked)
    out = []
    with curv.tracked.inputs_in(curv.compute):
        for x, y, _ in iterate(train, batch_size, progress, "self-influence", indices, dtype):
            pairs, _ = layer_grads(curv.tracked, x, lambda o, y=y: task.loss(o, y))
            out.append(curv.self_influence(pairs).detach())
    return torch.cat(out)


@dataclass(frozen=True)
class Ranked:
    """Training indices with their scores, most extreme first."""

    indices: torch.Tensor
    scores: torch.Tensor


def top_k(scores: torch.Tensor, k: int = 10) -> tuple[Ranked, Ranked]:
    """(most helpful, most harmful) of a (N,) score vector: largest and smallest scores."""
    k = min(k, scores.numel())
    hi = torch.topk(scores, k)
    lo = torch.topk(-scores, k)
    return Ranked(hi.indices, hi.values), Ranked(lo.indices, -lo.values)
