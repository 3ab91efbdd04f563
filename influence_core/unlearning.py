"""Newton-step unlearning: remove or relabel training points without retraining.

With H = G + lambda I the damped curvature of the MEAN training loss at theta, and n = N - m
after removing m points:
  remove D:        theta_new = theta + (1/n) H^-1 sum_{z in D} grad L(z, theta)
  relabel z -> z~: theta_new = theta + (1/n) H^-1 sum (grad L(z, theta) - grad L(z~, theta))
Relabelling is "remove z, add z~": adding z~ moves theta DOWN grad L(z~), removing z moves it UP
grad L(z). (The paper's Section 8 prints the difference the other way round; tests/
test_unlearning.py shows that sign moves the model away from the retrained one.)

All edits are applied as ONE batched step from the same theta: the step is a sum over edits, so
it does not depend on the order in which decisions were made, and undo or replay of a log is a
deterministic recomputation. `refine` adds a few damped Newton steps where one is not enough.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .curvature.base import Curvature, iterate, model_dtype
from .datasets import ImageDataset
from .gradients import TrackedModel, layer_grads
from .task import Task

REFINE_MODES = ("local", "full")


def _check_edits(
    train: ImageDataset, remove: Sequence[int], relabel: Mapping[int, int]
) -> tuple[list[int], list[tuple[int, int]]]:
    n, k = len(train), train.num_classes
    rem = sorted(int(i) for i in remove)
    rel = sorted((int(i), int(y)) for i, y in relabel.items())
    for i in rem + [i for i, _ in rel]:
        if not 0 <= i < n:
            raise ValueError(f"index {i} is outside the training set (0..{n - 1})")
    if len(set(rem)) != len(rem):
        raise ValueError("an index is removed twice")
    for i, y in rel:
        if not 0 <= y < k:
            raise ValueError(f"label {y} for index {i} is outside 0..{k - 1}")
        if y == int(train.labels[i]):
            raise ValueError(f"index {i} already has label {y}")
    if set(rem) & {i for i, _ in rel}:
        raise ValueError("an index cannot be both removed and relabelled")
    return rem, rel


def _summed_grad(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([torch.einsum("bto,bti->oi", g, a).reshape(-1) for a, g in pairs])


def edit_gradient(
    tracked: TrackedModel, task: Task, train: ImageDataset, remove: Sequence[int] = (),
    relabel: Mapping[int, int] | None = None, batch_size: int = 512,
) -> torch.Tensor:
    """(p,) sum_{remove} grad L(z_i) + sum_{relabel} (grad L(z_i) - grad L(z~_i)) at the
    tracked model's current parameters, z_i with its label in `train`, z~_i with the new one."""
    rem, rel = _check_edits(train, remove, relabel or {})
    new_label = dict(rel)
    indices = torch.tensor(rem + [i for i, _ in rel], dtype=torch.long)
    total = torch.zeros(tracked.num_params, dtype=torch.float64)
    for x, y, idx in iterate(train, batch_size, lambda *a: None, "", indices, model_dtype(tracked)):
        y_new = torch.tensor([new_label.get(int(i), -1) for i in idx])
        relabelled = y_new >= 0

        def loss(out: torch.Tensor, y=y, y_new=y_new, relabelled=relabelled) -> torch.Tensor:
            repaired = task.loss(out[relabelled], y_new[relabelled])
            return torch.cat([task.loss(out, y), -repaired])

        pairs, _ = layer_grads(tracked, x, loss)
        total += _summed_grad(pairs).double()
    return total


def newton_step(
    curv: Curvature, task: Task, train: ImageDataset, remove: Sequence[int] = (),
    relabel: Mapping[int, int] | None = None, weight_decay: float = 0.0, batch_size: int = 512,
) -> torch.Tensor:
    """(p,) delta = (1/n) H^-1 [sum_remove grad L(z) + sum_relabel (grad L(z) - grad L(z~))
    + m weight_decay theta], n = N - m after removing m points, gradients at curv.tracked's
    parameters (the model H was fitted on). `relabel` maps index -> new label; labels in
    `train` are those the model was trained on. The weight-decay term is exact for the objective
    mean loss + weight_decay/2 |theta|^2 at a stationary theta (removing points re-weights the
    regulariser); it vanishes without removals."""
    g = edit_gradient(curv.tracked, task, train, remove, relabel, batch_size)
    if remove and weight_decay:
        g += len(remove) * weight_decay * curv.tracked.flat_params().double()
    if not g.any():
        return g
    n = len(train) - len(remove)
    dtype = model_dtype(curv.tracked)
    return curv.ihvp(g.to(dtype)[None])[0].double() / n


def updated_model(curv: Curvature, delta: torch.Tensor) -> nn.Module:
    """A copy of curv.tracked's model with theta + delta on the tracked layers (eval mode)."""
    model = copy.deepcopy(curv.tracked.model)
    if delta.any():
        TrackedModel(model, list(curv.tracked.modules)).add_to_params(delta)
    return model.eval()


def rebind(curv: Curvature, model: nn.Module) -> Curvature:
    """The same fitted curvature (factors unchanged) applied to another model with the same
    tracked layers: gradients are then taken at that model's parameters."""
    out = copy.copy(curv)
    out.tracked = TrackedModel(model, list(curv.tracked.modules))
    return out


def dataset_gradient(
    tracked: TrackedModel, task: Task, data: ImageDataset, indices: torch.Tensor | None = None,
    batch_size: int = 512,
) -> torch.Tensor:
    """(p,) sum_i grad L(z_i) over `indices` (default all) at the tracked model's parameters."""
    total = torch.zeros(tracked.num_params, dtype=torch.float64)
    for x, y, _ in iterate(data, batch_size, lambda *a: None, "", indices, model_dtype(tracked)):
        pairs, _ = layer_grads(tracked, x, lambda out, y=y: task.loss(out, y))
        total += _summed_grad(pairs).double()
    return total


def refine(
    curv: Curvature, task: Task, train: ImageDataset, delta: torch.Tensor,
    remove: Sequence[int] = (), relabel: Mapping[int, int] | None = None, steps: int = 3,
    step_size: float = 1.0, mode: str = "local", weight_decay: float = 0.0,
    batch_size: int = 512,
) -> torch.Tensor:
    """Damped Newton steps delta <- delta - step_size H^-1 grad q(theta + delta), from the one-
    step `delta`, on the edited objective q with H held fixed. Returns the refined delta (p,).

    local: q(theta') = 1/2 d^T H d - (1/n) sum_edits [L(z) - L(z~)](theta'), d = theta' - theta:
        the unedited points' loss is modelled quadratically by H; only the edited points'
        gradients are re-evaluated (one small backward per step, milliseconds).
    full:  q = edited mean training loss + weight_decay/2 |theta'|^2, minus the base gradient at
        theta (theta treated as a stationary point of the base objective): one pass over the
        training set per step."""
    if mode not in REFINE_MODES:
        raise ValueError(f"mode must be one of {REFINE_MODES}, got {mode!r}")
    relabel = dict(relabel or {})
    n_base, n = len(train), len(train) - len(remove)
    dtype = model_dtype(curv.tracked)
    if mode == "full":
        edited = train.with_labels(_labels_after(train, relabel))
        keep = _kept(len(train), remove)
        base_grad = dataset_gradient(curv.tracked, task, train, None, batch_size) / n_base
    for _ in range(steps):
        moved = rebind(curv, updated_model(curv, delta)).tracked
        if mode == "local":
            step = _local_gradient(curv, moved, task, train, delta, remove, relabel, n, dtype)
        else:
            grad = dataset_gradient(moved, task, edited, keep, batch_size) / n - base_grad
            step = _ihvp(curv, grad + weight_decay * delta, dtype)
        delta = delta - step_size * step
    return delta


def _local_gradient(
    curv: Curvature, moved: TrackedModel, task: Task, train: ImageDataset, delta: torch.Tensor,
    remove: Sequence[int], relabel: Mapping[int, int], n: int, dtype: torch.dtype,
) -> torch.Tensor:
    """H^-1 grad q = delta - (1/n) H^-1 sum_edits grad [L(z) - L(z~)] at theta + delta."""
    g = edit_gradient(moved, task, train, remove, relabel)
    return delta - curv.ihvp(g.to(dtype)[None])[0].double() / n


def _ihvp(curv: Curvature, v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return curv.ihvp(v.to(dtype)[None])[0].double()


def _labels_after(train: ImageDataset, relabel: Mapping[int, int]) -> torch.Tensor:
    labels = train.labels.clone()
    for i, y in relabel.items():
        labels[int(i)] = int(y)
    return labels


def _kept(n: int, remove: Sequence[int]) -> torch.Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    mask[torch.as_tensor(list(remove), dtype=torch.long)] = False
    return torch.nonzero(mask)[:, 0]
