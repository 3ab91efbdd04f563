"""The attribution index: exact at full width, close when truncated, refused for another model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from influence_core import (
    ArtifactError,
    EKFACConfig,
    IndexConfig,
    index_curvature,
    index_scores,
    load_dataset,
    load_index,
    pairwise_influence,
    precompute,
    query_index,
    self_influence,
)
from influence_core.config import TrainConfig
from influence_core.index import query_vector
from influence_core.models import build_model
from influence_core.registry import Problem
from influence_core.training import train_model

FULL_WIDTH_RTOL = 1e-4  # float32 index holding every direction vs EK-FAC pairwise scores
SELF_RTOL = 1e-4  # fused self-influence vs attribution.self_influence
TRUNCATED_SPEARMAN = 0.85  # float16 index of 4096 of 26k directions vs full EK-FAC (0.92 seen)


@pytest.fixture(scope="module")
def problem(tmp_path_factory) -> Problem:
    train, test = load_dataset("digits")
    cfg = TrainConfig(dataset="digits", model="mlp", epochs=3, seed=0)
    torch.manual_seed(0)
    model = train_model(build_model("mlp", train.shape, train.num_classes), train, cfg).eval()
    return Problem(cfg, model, train, test, torch.zeros(len(train), dtype=torch.bool), {})


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("home")
        mp.setenv("INFLUENCE_AUDIT_HOME", str(path))
        yield path


def _index(problem, home, **kw):
    folder = precompute(problem, "ekfac", EKFACConfig(), IndexConfig(**kw))
    return load_index(folder, problem.model, dtype=torch.float32)


def test_full_width_index_reproduces_ekfac_scores(problem, home) -> None:
    index = _index(problem, home, dim=10**6, dtype="float32", shard_size=600)
    curv = index_curvature(index)
    queries = torch.arange(8)
    x, y = problem.test.tensor(queries), problem.test.labels[queries]
    exact = pairwise_influence(curv, index.task, x, y, problem.train)  # (8, N)
    approx = torch.stack([index_scores(index, x[i], y[i]) for i in range(len(queries))])
    assert torch.linalg.norm(approx - exact) <= FULL_WIDTH_RTOL * torch.linalg.norm(exact)
    ref = self_influence(curv, index.task, problem.train)
    got = torch.from_numpy(np.asarray(index.arrays["self_influence"]))
    torch.testing.assert_close(got, ref, rtol=SELF_RTOL, atol=0.0)


def test_truncated_float16_index_keeps_the_ranking(problem, home) -> None:
    """Kept directions are ordered by weight: wider prefixes rank better, 4096 of 26k is close."""
    full = _index(problem, home, dim=10**6, dtype="float32", shard_size=600)
    folder = precompute(problem, "ekfac", EKFACConfig(), IndexConfig(dim=4096, shard_size=600))
    small = load_index(folder, problem.model)  # bfloat16 in RAM, the default
    assert small.vectors.shape == (len(problem.train), 4096)
    torch.testing.assert_close(small.vectors[:, :64].float(), full.vectors[:, :64], rtol=1e-2,
                               atol=1e-2)
    rho = {512: [], 4096: []}
    for q in range(8):
        x, y = problem.test.tensor([q])[0], int(problem.test.labels[q])
        exact, qv = index_scores(full, x, y), query_vector(small, x, y)
        for m, values in rho.items():
            approx = small.vectors[:, :m].float() @ qv[:m]
            values.append(spearmanr(approx, exact).statistic)
    assert np.mean(rho[4096]) >= TRUNCATED_SPEARMAN, rho
    assert np.mean(rho[512]) < np.mean(rho[4096]), rho


def test_query_returns_extremes_for_test_and_uploaded_images(problem, home) -> None:
    index = _index(problem, home, dim=512)
    x = problem.test.tensor([3])[0]
    scores = index_scores(index, x, None)
    helpful, harmful = query_index(index, x, None, k=5)
    assert helpful.indices.tolist() == torch.topk(scores, 5).indices.tolist()
    assert harmful.indices.tolist() == torch.topk(-scores, 5).indices.tolist()
    assert (helpful.scores[:-1] >= helpful.scores[1:]).all() and harmful.scores.max() < 0
    upload = problem.test.normalise(problem.test.image(3).resize((40, 40)).convert("RGB"))
    up_helpful, _ = query_index(index, upload, None, k=5)
    assert len(up_helpful.indices) == 5 and torch.isfinite(up_helpful.scores).all()


def test_index_is_refused_for_another_model(problem, home) -> None:
    folder = precompute(problem, "ekfac", EKFACConfig(), IndexConfig(dim=512))
    other = build_model("mlp", problem.train.shape, problem.train.num_classes)
    other.load_state_dict(problem.model.state_dict())
    with torch.no_grad():
        next(other.parameters())[0, 0] += 1e-3
    with pytest.raises(ArtifactError, match="model_hash"):
        load_index(folder, other)
    with pytest.raises(ArtifactError, match="method"):
        load_index(folder, problem.model, expected={"method": "kfac"})
