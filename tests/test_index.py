"""The attribution index: exact at full width, close when truncated, refused for another model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from influence_core import (
    ArtifactError,
    ClassificationTask,
    EKFACConfig,
    IndexConfig,
    TrackedModel,
    fit_curvature,
    index_curvature,
    index_scores,
    load_dataset,
    load_index,
    pairwise_influence,
    precompute,
    query_index,
    self_influence,
)
from influence_core.attribution.index import query_vector
from influence_core.config import TrainConfig
from influence_core.data.models import build_model
from influence_core.data.registry import Problem
from influence_core.data.training import train_model

FULL_WIDTH_RTOL = 1e-4  # float32 index holding every direction vs EK-FAC pairwise scores
SELF_RTOL = 1e-4  # fused self-influence vs attribution.self_influence
# digits CNN: 4096 of 18.8k conv directions + rank-16 kernels (0.916 seen)
TRUNCATED_SPEARMAN = 0.88
EVERYTHING = dict(dim=10**6, rank=10**4, dtype="float32", shard_size=600, matmul="float32")


def _trained(model: str) -> Problem:
    train, test = load_dataset("digits")
    cfg = TrainConfig(dataset="digits", model=model, epochs=3, seed=0)
    torch.manual_seed(0)
    net = train_model(build_model(model, train.shape, train.num_classes), train, cfg).eval()
    return Problem(cfg, net, train, test, torch.zeros(len(train), dtype=torch.bool), {})


@pytest.fixture(scope="module")
def problem() -> Problem:
    return _trained("mlp")


@pytest.fixture(scope="module")
def cnn_problem() -> Problem:
    return _trained("cnn")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("home")
        mp.setenv("INFLUENCE_AUDIT_HOME", str(path))
        yield path


def _index(problem, home, curvature=EKFACConfig(), **kw):
    folder = precompute(problem, "ekfac", curvature, IndexConfig(**kw))
    return load_index(folder, problem.model, dtype=torch.float32)


def _queries(problem, n=8):
    q = torch.arange(n)
    return problem.test.tensor(q), problem.test.labels[q]


def test_bfloat16_precompute_moves_scores_less_than_the_fit_s_own_sampling(cnn_problem,
                                                                           home) -> None:
    """matmul=bfloat16 (the default where the CPU has bf16 units: bf16 products in all three
    passes, autocast forward-backward in the two fit passes) against float32: the scores move
    less than refitting float32 with another pseudo-label seed moves them, rankings are kept,
    and so do self-influence values, whose ranking is kept."""
    reference = _index(cnn_problem, home, **EVERYTHING)
    fast = _index(cnn_problem, home, **{**EVERYTHING, "matmul": "bfloat16"})
    reseeded = _index(cnn_problem, home, EKFACConfig(seed=1), **EVERYTHING)
    x, y = _queries(cnn_problem)

    def scores(index):
        return torch.stack([index_scores(index, x[i], y[i]) for i in range(len(x))])

    want = scores(reference)
    assert torch.linalg.norm(scores(fast) - want) <= torch.linalg.norm(scores(reseeded) - want)
    assert min(spearmanr(a, e).statistic for a, e in zip(scores(fast), want)) >= 0.98
    got, ref, other = (np.asarray(i.arrays["self_influence"], dtype=np.float64)
                       for i in (fast, reference, reseeded))
    assert np.linalg.norm(got - ref) <= np.linalg.norm(other - ref)
    assert spearmanr(got, ref).statistic >= 0.999


def test_bfloat16_library_fit_moves_scores_less_than_the_fit_s_own_sampling(cnn_problem) -> None:
    """EKFACConfig(matmul="bfloat16") (the library default where the CPU has bf16 units:
    autocast fit passes, bf16 covariance and rotation products, bf16 rotations in
    self-influence) against float32: self-influence and pairwise scores move less than a
    float32 refit with another pseudo-label seed moves them, and rankings are kept."""
    tracked, task, train = TrackedModel(cnn_problem.model), ClassificationTask(), cnn_problem.train
    x, y = _queries(cnn_problem)

    def fit(cfg):
        curv = fit_curvature("ekfac", tracked, task, train, cfg)
        return curv, self_influence(curv, task, train), pairwise_influence(curv, task, x, y, train)

    ref_curv, ref_self, ref_pairs = fit(EKFACConfig(matmul="float32"))
    curv, fast_self, fast_pairs = fit(EKFACConfig(matmul="bfloat16"))
    _, other_self, other_pairs = fit(EKFACConfig(matmul="float32", seed=1))
    assert curv.compute == torch.bfloat16 and ref_curv.compute is None
    assert tracked.input_dtype is None  # captured inputs back to full precision after the fit
    assert torch.linalg.norm(fast_self - ref_self) <= torch.linalg.norm(other_self - ref_self)
    assert torch.linalg.norm(fast_pairs - ref_pairs) <= torch.linalg.norm(other_pairs - ref_pairs)
    assert spearmanr(fast_self, ref_self).statistic >= 0.999
    assert min(spearmanr(a, b).statistic for a, b in zip(fast_pairs, ref_pairs)) >= 0.98


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("factorise", [True, False])
def test_full_width_index_reproduces_ekfac_scores(problem, cnn_problem, home, model,
                                                  factorise) -> None:
    """Every direction kept (factor columns with a full-rank kernel, or all eigen-directions):
    the index scores are EK-FAC's pairwise scores and its self-influence is EK-FAC's."""
    problem = problem if model == "mlp" else cnn_problem
    index = _index(problem, home, factorise=factorise, **EVERYTHING)
    assert (index.projection.eigen_dim == 0) == (factorise and model == "mlp")
    curv = index_curvature(index)
    x, y = _queries(problem)
    exact = pairwise_influence(curv, index.task, x, y, problem.train)  # (8, N)
    approx = torch.stack([index_scores(index, x[i], y[i]) for i in range(len(x))])
    assert torch.linalg.norm(approx - exact) <= FULL_WIDTH_RTOL * torch.linalg.norm(exact)
    batched = index.projection.scores(torch.stack([query_vector(index, a, b)
                                                   for a, b in zip(x, y)]), index.vectors)
    torch.testing.assert_close(batched, approx, rtol=1e-4, atol=1e-4 * float(exact.abs().max()))
    ref = self_influence(curv, index.task, problem.train)
    got = torch.from_numpy(np.asarray(index.arrays["self_influence"]))
    # float32 rounding (a channels-last copy runs the passes): relative to the largest value
    torch.testing.assert_close(got, ref, rtol=SELF_RTOL, atol=1e-6 * float(ref.abs().max()))


def test_factorised_layers_drop_only_dead_directions(problem, home) -> None:
    """The factor part keeps u, v only where some Lambda / (Lambda + lambda) is live; the
    dropped columns carry no training gradient, so full-rank scores stay exact."""
    index = _index(problem, home, **EVERYTHING)
    kept = sum(len(r) + len(c) for r, c in zip(index.projection.rows, index.projection.cols))
    full = sum(sum(f.eigenvalues.shape) for f in index.projection.factors)
    assert index.vectors.shape[1] == kept <= full


def test_truncated_float16_index_keeps_the_ranking(cnn_problem, home) -> None:
    """A CNN: conv eigen-directions by weight (wider prefixes rank better) plus factorised linear
    layers at the default rank; the factorised index beats the all-eigen one of equal width."""
    problem = cnn_problem
    full = _index(problem, home, **EVERYTHING)
    folder = precompute(problem, "ekfac", EKFACConfig(), IndexConfig(dim=4096, shard_size=600))
    small = load_index(folder, problem.model, dtype=torch.bfloat16)  # as on bf16 CPUs
    width = small.vectors.shape[1]
    flat = load_index(precompute(problem, "ekfac", EKFACConfig(),
                                 IndexConfig(dim=width, factorise=False, shard_size=600)),
                      problem.model)
    assert flat.vectors.shape[1] == width and flat.projection.eigen_dim == width
    rho: dict[str, list[float]] = {"1024": [], "4096": [], "flat": []}
    x, y = _queries(problem)
    for q in range(len(x)):
        exact = index_scores(full, x[q], y[q])
        for m in (1024, 4096):
            narrow = load_index(folder, problem.model, width=m)
            rho[str(m)].append(spearmanr(index_scores(narrow, x[q], y[q]), exact).statistic)
        rho["flat"].append(spearmanr(index_scores(flat, x[q], y[q]), exact).statistic)
    assert np.mean(rho["4096"]) >= TRUNCATED_SPEARMAN, rho
    assert np.mean(rho["1024"]) < np.mean(rho["4096"]), rho
    assert np.mean(rho["flat"]) < np.mean(rho["4096"]), rho


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


@pytest.mark.parametrize("bf16_units", [True, False])
def test_index_is_held_in_bfloat16_only_where_the_cpu_has_bf16_units(problem, home, monkeypatch,
                                                                     bf16_units) -> None:
    """Without bf16 matrix units a bfloat16 product with the index is 10-15x slower than float32,
    so load_index's default keeps float32 there."""
    import influence_core.attribution.index as index_module

    monkeypatch.setattr(index_module, "cpu_has_bf16_units", lambda: bf16_units)
    folder = precompute(problem, "ekfac", EKFACConfig(), IndexConfig())
    loaded = load_index(folder, problem.model)
    assert loaded.vectors.dtype == (torch.bfloat16 if bf16_units else torch.float32)
