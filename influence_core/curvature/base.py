"""The curvature interface: fit, then ihvp(v) = (G + lambda I)^-1 v.

G is the Gauss-Newton matrix of the MEAN training loss, G = E_i[J_i^T H_out,i J_i], which for
cross-entropy equals the true Fisher E_i E_{y ~ p(.|x_i)}[g g^T] with g = grad L(x_i, y).

Damping default (documented in the README): lambda = damping_factor (0.1) x the mean eigenvalue
of the approximated curvature; per layer for K-FAC and EK-FAC (Kronfluence's heuristic), and
trace(G) / p over all tracked parameters for exact and LiSSA. Pass `damping` to override.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch

from ..data.datasets import ImageDataset
from ..progress import Progress, silent
from ..runtime import cpu_has_bf16_units
from .gradients import TrackedModel, backward_pairs, forward_capture, per_example_grads
from .task import Task

Pairs = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (a (B,T,d_in), g (B,T,d_out))


class Curvature(ABC):
    """A fitted (G + lambda I)^-1. Subclasses implement `ihvp_layers`."""

    name: str = "curvature"
    tracked: TrackedModel
    # the dtype self_influence multiplies layer inputs in (None: the model's); Kronecker
    # methods with bfloat16 rotations set it, so the scoring pass captures inputs in it
    compute: torch.dtype | None = None

    @abstractmethod
    def ihvp_layers(self, vectors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per layer (k, d_out, d_in) -> (G + lambda I)^-1 applied, same shapes."""

    def ihvp(self, vectors: torch.Tensor) -> torch.Tensor:
        """(k, p) -> (k, p): (G + lambda I)^-1 applied to each row."""
        parts = self.ihvp_layers(self.tracked.split(vectors))
        return torch.cat([x.flatten(1) for x in parts], dim=1)

    def self_influence(self, pairs: Pairs) -> torch.Tensor:
        """(B,) grad_i^T (G + lambda I)^-1 grad_i for a batch of captured gradients."""
        grads = per_example_grads(pairs)
        return (grads * self.ihvp(grads)).sum(1)


def fisher_pairs(
    tracked: TrackedModel, task: Task, x: torch.Tensor, y: torch.Tensor, mode: str,
    generator: torch.Generator, compute: torch.dtype | None = None,
) -> Iterator[Pairs]:
    """Pseudo-gradients whose outer products average to G for this batch.

    sampled: one label per example drawn from the model's predictive distribution (true Fisher);
    expected: every class k, with the loss scaled by sqrt(p_k) (exact expectation, K backwards);
    empirical: the given labels (empirical Fisher). `compute` (bfloat16): the forward runs under
    autocast (the fit passes only average outer products and squares, which 8-bit mantissas
    barely move: tested); the outputs are cast back, so losses and probabilities stay float32."""
    amp = compute is not None
    with torch.autocast(x.device.type, dtype=compute or torch.bfloat16, enabled=amp):
        store, outputs = forward_capture(tracked, x)
    outputs = outputs.to(x.dtype)
    if mode == "expected":
        probs = task.fisher_weights(outputs)
        k_classes = probs.shape[1]
        for k in range(k_classes):
            labels = torch.full_like(y, k)
            losses = probs[:, k].sqrt() * task.loss(outputs, labels)
            yield backward_pairs(tracked, store, losses, retain_graph=k < k_classes - 1)
        return
    if mode == "sampled":
        probs = task.fisher_weights(outputs).double()
        y = torch.multinomial(probs, 1, generator=generator)[:, 0]
    yield backward_pairs(tracked, store, task.loss(outputs, y))


def iterate(
    data: ImageDataset, batch_size: int, progress: Progress, what: str,
    indices: torch.Tensor | None = None, dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """data.batches with progress reporting and the model's dtype."""
    total = len(data) if indices is None else len(indices)
    done = 0
    for x, y, idx in data.batches(batch_size, indices):
        yield x.to(dtype), y, idx
        done += len(idx)
        progress(done, total, what)


def model_dtype(tracked: TrackedModel) -> torch.dtype:
    return next(iter(tracked.modules.values())).weight.dtype


def matmul_dtype(setting: str, model: torch.dtype) -> torch.dtype | None:
    """The dtype of the fit passes' and the rotations' big products for a `setting` of
    config.MATMUL (None: the model's own). auto = bfloat16 where the CPU has bf16 matrix units
    (AMX / AVX512-BF16), else float32; float64 models (tests, exact comparisons) always compute
    in float64."""
    if model != torch.float32 or setting == "float32":
        return None
    if setting == "bfloat16" or cpu_has_bf16_units():
        return torch.bfloat16
    return None


def trace_over_params(
    tracked: TrackedModel, task: Task, data: ImageDataset, batch_size: int,
    progress: Progress = silent,
) -> float:
    """trace(G) / p, the mean eigenvalue of G, from expected-Fisher per-example gradients."""
    total, gen = 0.0, torch.Generator()
    for x, y, _ in iterate(data, batch_size, progress, "trace(G)", dtype=model_dtype(tracked)):
        for pairs in fisher_pairs(tracked, task, x, y, "expected", gen):
            total += float(per_example_grads(pairs).pow(2).sum())
    return total / len(data) / tracked.num_params
