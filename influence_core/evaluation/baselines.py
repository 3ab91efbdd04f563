"""Reference implementations run beside ours in the same evaluation: Kronfluence's EK-FAC
(pairwise and self scores), cleanlab's label issues, and TRAK-style projected-gradient scores.

Kronfluence is the optional [kronfluence] extra, imported through `optional.require` when a
function needs it; cleanlab is a runtime dependency, imported inside its function."""

from __future__ import annotations

import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..curvature.gradients import TrackedModel, layer_grads, per_example_grads
from ..curvature.task import margin
from ..data.datasets import ImageDataset
from ..optional import require


def _kronfluence_task(measurement: str) -> object:
    KTask = require("kronfluence.task", "Kronfluence's scores").Task

    class _Classification(KTask):
        def compute_train_loss(self, batch: list, model: nn.Module, sample: bool = False
                               ) -> torch.Tensor:
            x, y = batch
            logits = model(x)
            if sample:
                with torch.no_grad():
                    y = torch.multinomial(logits.softmax(-1).double(), 1)[:, 0]
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch: list, model: nn.Module) -> torch.Tensor:
            x, y = batch
            logits = model(x)
            if measurement == "margin":
                return -margin(logits, y).sum()
            return F.cross_entropy(logits, y, reduction="sum")

    return _Classification()


def _tensor_dataset(data: ImageDataset) -> torch.utils.data.Dataset:
    return torch.utils.data.TensorDataset(data.tensor(slice(None)), data.labels)


def kronfluence_scores(
    model: nn.Module, train: ImageDataset, query: ImageDataset | None = None,
    measurement: str = "margin", strategy: str = "ekfac", heuristic_damping: bool = True,
    batch_size: int = 256,
) -> torch.Tensor:
    """Kronfluence on CPU: pairwise scores (Q, N) of `query` against `train`, or self-influence
    (N,) when query is None. heuristic_damping: lambda = 0.1 x mean eigenvalue (ours), else
    Kronfluence's default 1e-8. Same sign convention as ours (helpful positive)."""
    analyzer_mod = require("kronfluence.analyzer", "Kronfluence's scores")
    arguments = require("kronfluence.arguments", "Kronfluence's scores")
    Analyzer, prepare_model = analyzer_mod.Analyzer, analyzer_mod.prepare_model
    FactorArguments, ScoreArguments = arguments.FactorArguments, arguments.ScoreArguments

    task = _kronfluence_task(measurement)
    prepared = prepare_model(_copy(model), task)
    with tempfile.TemporaryDirectory() as out:
        analyzer = Analyzer("eval", prepared, task, cpu=True, disable_tqdm=True, output_dir=out,
                            disable_model_save=True)
        train_ds = _tensor_dataset(train)
        analyzer.fit_all_factors("factors", train_ds, per_device_batch_size=batch_size,
                                 factor_args=FactorArguments(strategy=strategy),
                                 overwrite_output_dir=True)
        score_args = ScoreArguments(damping_factor=None if heuristic_damping else 1e-8)
        if query is None:
            analyzer.compute_self_scores(
                "self", "factors", train_ds, per_device_train_batch_size=batch_size,
                score_args=score_args, overwrite_output_dir=True)
            scores = analyzer.load_self_scores("self")
        else:
            analyzer.compute_pairwise_scores(
                "pairwise", "factors", _tensor_dataset(query), train_ds,
                per_device_query_batch_size=batch_size, per_device_train_batch_size=batch_size,
                score_args=score_args, overwrite_output_dir=True)
            scores = analyzer.load_pairwise_scores("pairwise")
        return scores["all_modules"].detach().clone().double()


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).eval()


def cleanlab_scores(labels: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, int]:
    """cleanlab's `find_label_issues` on out-of-sample probabilities as a full ranking:
    (suspect (N,), number flagged). Flagged issues come first in cleanlab's own order
    (self-confidence), the rest by 1 - self-confidence."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    y, p = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    p = p / p.sum(1, keepdims=True)
    ranked = find_label_issues(y, p, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(y, p, method="self_confidence")
    suspect = 1.0 - quality  # in [0, 1]
    suspect[ranked] = 2.0 + np.linspace(1.0, 0.0, len(ranked))  # flagged first, in order
    return torch.from_numpy(suspect), len(ranked)


def trak_scores(
    model: nn.Module, train: ImageDataset, query_x: torch.Tensor, query_y: torch.Tensor,
    dim: int = 2048, damping: float = 1e-3, seed: int = 0, batch_size: int = 256,
) -> torch.Tensor:
    """TRAK-style (Park et al. 2023, one checkpoint): margin gradients projected to `dim`
    dimensions (Gaussian, seeded), phi_q (Phi^T Phi / N + lambda I)^-1 phi_i, lambda relative
    to the mean eigenvalue. Materialises (B, p) gradients: for small models only. (Q, N)."""
    tracked = TrackedModel(model)
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(tracked.num_params, dim, generator=gen) / dim**0.5

    def phi(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pairs, _ = layer_grads(tracked, x, lambda out: -margin(out, y))
        return (per_example_grads(pairs) @ proj).double()

    feats = torch.cat([phi(x, y) for x, y, _ in train.batches(batch_size)])  # (N, dim)
    gram = feats.T @ feats / len(feats)
    lam = damping * float(torch.diagonal(gram).mean())
    inv = torch.linalg.inv(gram + lam * torch.eye(dim, dtype=torch.float64))
    return phi(query_x, query_y) @ inv @ feats.T
