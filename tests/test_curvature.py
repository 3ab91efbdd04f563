"""Curvature estimators against the exact damped Gauss-Newton inverse on tiny float64 models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from influence_core import (
    ClassificationTask,
    EKFACConfig,
    ExactConfig,
    ImageDataset,
    KFACConfig,
    LissaConfig,
    LissaDivergedError,
    TrackedModel,
    UnsupportedLayerError,
    fit_curvature,
)

EXACT_TOL = 1e-8  # relative error where the factorisation is exact (float64 round-off)
LISSA_TOL = 1e-2  # relative error of full-batch LiSSA at LISSA_DEPTH steps
LISSA_DEPTH = 600


def tensor_dataset(x: torch.Tensor, y: torch.Tensor, classes: int) -> ImageDataset:
    """An in-memory ImageDataset whose model inputs are exactly x (N, 1, H, W), float64."""
    pixels = torch.zeros(x.shape[0], x.shape[2], x.shape[3], dtype=torch.uint8)  # unused
    ds = ImageDataset("toy", "train", [str(c) for c in range(classes)], y, (0.0,), (1.0,),
                      pixels=pixels)
    ds.tensor = lambda idx: x[idx]  # bypass uint8 pixels: exact float64 inputs
    return ds


@pytest.fixture
def toy_mlp() -> tuple[nn.Module, ImageDataset]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(40, 1, 2, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    return model, tensor_dataset(x, y, 3)


@pytest.fixture
def toy_cnn() -> tuple[nn.Module, ImageDataset]:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 4)
    ).double()
    x = torch.randn(24, 2, 6, 6, dtype=torch.float64)  # 2 channels: the column order matters
    y = torch.randint(0, 4, (24,))
    return model, tensor_dataset(x, y, 4)


def dense_gauss_newton(tracked: TrackedModel, data: ImageDataset) -> torch.Tensor:
    """Independent oracle: G = (1/N) sum_i J_i^T (diag(p_i) - p_i p_i^T) J_i via jacrev."""
    model, theta = tracked.model, tracked.flat_params()

    def logits(flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, tracked.as_params(flat), (x,))

    x = data.tensor(torch.arange(len(data)))
    jac = jacrev(logits)(theta, x)  # (N, K, p)
    p = logits(theta, x).softmax(1)
    h = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("nkp,nkl,nlq->pq", jac, h, jac) / len(data)


def eye(n: int) -> torch.Tensor:
    return torch.eye(n, dtype=torch.float64)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_exact_equals_dense_solve(toy_mlp) -> None:
    model, data = toy_mlp
    tracked = TrackedModel(model)
    curv = fit_curvature("exact", tracked, ClassificationTask(), data, ExactConfig(damping=1e-3))
    g = dense_gauss_newton(tracked, data)
    v = torch.randn(4, tracked.num_params, dtype=torch.float64)
    want = torch.linalg.solve(g + 1e-3 * torch.eye(len(g), dtype=g.dtype), v.T).T
    assert rel_err(curv.ihvp(v), want) < EXACT_TOL


def test_exact_gram_route_matches_dense(toy_mlp, monkeypatch) -> None:
    """When N*K < p the exact estimator eigendecomposes the Gram matrix instead of G."""
    import influence_core.curvature.exact as exact_mod

    model, data = toy_mlp
    tracked = TrackedModel(model)
    cfg = ExactConfig(damping=1e-2)
    dense = fit_curvature("exact", tracked, ClassificationTask(), data, cfg)
    monkeypatch.setattr(exact_mod, "DENSE_LIMIT", 1)
    small = tensor_dataset(data.tensor(torch.arange(5)), data.labels[:5], 3)
    gram = fit_curvature("exact", tracked, ClassificationTask(), small, cfg)
    dense_small = torch.linalg.solve(
        dense_gauss_newton(tracked, small) + 1e-2 * eye(tracked.num_params),
        eye(tracked.num_params),
    )
    assert not gram.complete and dense.complete
    assert rel_err(gram.ihvp(eye(tracked.num_params)), dense_small) < EXACT_TOL


@pytest.mark.parametrize("method", ["kfac", "ekfac"])
def test_kronecker_exact_for_one_linear_layer_one_example(method: str) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()
    data = tensor_dataset(torch.randn(1, 1, 2, 2, dtype=torch.float64), torch.tensor([1]), 3)
    tracked = TrackedModel(model)
    task = ClassificationTask()
    exact = fit_curvature("exact", tracked, task, data, ExactConfig(damping=1e-3))
    cfg = (EKFACConfig if method == "ekfac" else KFACConfig)(damping=1e-3, fisher="expected")
    approx = fit_curvature(method, tracked, task, data, cfg)
    v = torch.randn(3, tracked.num_params, dtype=torch.float64)
    assert rel_err(approx.ihvp(v), exact.ihvp(v)) < EXACT_TOL


@pytest.mark.parametrize("fixture", ["toy_mlp", "toy_cnn"])
def test_ekfac_no_worse_than_kfac(fixture: str, request) -> None:
    model, data = request.getfixturevalue(fixture)
    tracked, task = TrackedModel(model), ClassificationTask()
    exact = fit_curvature("exact", tracked, task, data, ExactConfig(damping=1e-2))
    errors = {}
    for method, cfg_cls in (("kfac", KFACConfig), ("ekfac", EKFACConfig)):
        curv = fit_curvature(method, tracked, task, data, cfg_cls(damping=1e-2, fisher="expected"))
        # Frobenius error of the approximated inverse, probed with the identity
        eye = torch.eye(tracked.num_params, dtype=torch.float64)
        errors[method] = rel_err(curv.ihvp(eye), exact.ihvp(eye))
    assert errors["ekfac"] <= errors["kfac"] + 1e-12, errors
    assert errors["ekfac"] < 1.0  # and it is a real approximation, not noise


def test_lissa_approaches_exact_with_depth(toy_mlp) -> None:
    model, data = toy_mlp
    tracked, task = TrackedModel(model), ClassificationTask()
    exact = fit_curvature("exact", tracked, task, data, ExactConfig(damping=0.05))
    cfg = LissaConfig(depth=LISSA_DEPTH, damping=0.05, batch_size=len(data))  # full batch
    lissa = fit_curvature("lissa", tracked, task, data, cfg)
    v = torch.randn(3, tracked.num_params, dtype=torch.float64)
    want = exact.ihvp(v)
    shallow, deep = rel_err(lissa.ihvp(v, depth=20), want), rel_err(lissa.ihvp(v), want)
    assert deep < LISSA_TOL, deep
    assert deep < shallow / 10


def test_lissa_divergence_is_reported_not_returned(toy_mlp) -> None:
    model, data = toy_mlp
    tracked = TrackedModel(model)
    # alpha far too big
    cfg = LissaConfig(depth=200, damping=1e-3, scale=1e-3, batch_size=len(data))
    lissa = fit_curvature("lissa", tracked, ClassificationTask(), data, cfg)
    with pytest.warns(RuntimeWarning, match="diverged"), pytest.raises(LissaDivergedError):
        lissa.ihvp(torch.randn(1, tracked.num_params, dtype=torch.float64))


def test_default_damping_is_relative_to_mean_eigenvalue(toy_mlp) -> None:
    model, data = toy_mlp
    tracked, task = TrackedModel(model), ClassificationTask()
    ekfac = fit_curvature("ekfac", tracked, task, data, EKFACConfig())
    for f in ekfac.factors:
        assert f.damping == pytest.approx(0.1 * float(f.eigenvalues.mean()))
    exact = fit_curvature("exact", tracked, task, data)
    assert exact.damping == pytest.approx(0.1 * float(exact.eigenvalues.sum()) / tracked.num_params)


def test_untrackable_layer_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(UnsupportedLayerError, match="only Linear and Conv2d"):
        TrackedModel(model, layers=["1"])
    with pytest.raises(UnsupportedLayerError, match="no layer named"):
        TrackedModel(model, layers=["nope"])
    assert list(TrackedModel(model, layers=["3"]).modules) == ["3"]  # the rest stays frozen


def test_attention_projections_are_left_frozen() -> None:
    """nn.MultiheadAttention bypasses its out_proj's forward, so it cannot be tracked; the
    surrounding Linear layers are, and their (B, S, d) inputs count S positions."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
            self.head = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.attn(x, x, x)[0]
            return self.head(h).mean(1)

    torch.manual_seed(0)
    model = Block().double()
    tracked = TrackedModel(model)
    assert list(tracked.modules) == ["head"]
    data = tensor_dataset(torch.randn(6, 1, 5, 4, dtype=torch.float64), torch.arange(6) % 3, 3)
    data.tensor = lambda idx: torch.randn(6, 5, 4, dtype=torch.float64,
                                          generator=torch.Generator().manual_seed(0))[idx]
    exact = fit_curvature("exact", tracked, ClassificationTask(), data, ExactConfig(damping=1e-2))
    g = dense_gauss_newton(tracked, data)
    v = torch.randn(2, tracked.num_params, dtype=torch.float64)
    want = torch.linalg.solve(g + 1e-2 * torch.eye(len(g), dtype=g.dtype), v.T).T
    assert rel_err(exact.ihvp(v), want) < EXACT_TOL


def test_eigenbasis_splits_off_dead_coordinates_exactly() -> None:
    """Coordinates of variance exactly 0 get unit eigenvectors with eigenvalue 0; every other
    eigenvector is exactly 0 on them, and Q diag(e) Q^T is the covariance."""
    from influence_core.curvature.factors import eigenbasis

    torch.manual_seed(0)
    x = torch.randn(50, 6, dtype=torch.float64)
    x[:, [1, 4]] = 0.0  # two dead coordinates
    cov = x.T @ x / 50
    e, q = eigenbasis(cov)
    torch.testing.assert_close(q @ torch.diag(e) @ q.T, cov)
    torch.testing.assert_close(q.T @ q, torch.eye(6, dtype=torch.float64))
    on_dead = (q[[1, 4]] != 0).any(0)  # the eigenvectors touching a dead coordinate
    assert on_dead.sum() == 2 and (e[on_dead] == 0).all()
    assert torch.equal(q[[1, 4]][:, on_dead].abs(), torch.eye(2, dtype=torch.float64))


def test_covariance_sums_accumulate_the_full_gram_matrix() -> None:
    """Only the upper block triangle is multiplied per batch; the mirrored sum is X^T X."""
    from influence_core.curvature.fit import CovarianceSums

    torch.manual_seed(0)
    tracked = TrackedModel(nn.Sequential(nn.Linear(300, 200)))
    sums = CovarianceSums(tracked, fold=2)
    batches = [(torch.randn(7, 1, 301), torch.randn(7, 1, 200)) for _ in range(5)]
    for a, g in batches:
        sums.add([(a, g)], count_inputs=True)
    (a_sum, s_sum), = sums.sums()
    a_all = torch.cat([a[:, 0] for a, _ in batches]).double()
    g_all = torch.cat([g[:, 0] for _, g in batches]).double()
    torch.testing.assert_close(a_sum, a_all.T @ a_all, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(s_sum, g_all.T @ g_all, rtol=1e-5, atol=1e-4)


def _dead_unit_model(n: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A float64 conv net with dead ReLU units (conv channel 1, hidden units 2 and 5) on its
    n random inputs x, and `awake`: x with 4 inputs that wake conv channel 1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 6),
                          nn.ReLU(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        model[0].bias[1] = -100.0  # conv channel 1 never fires on these inputs
        model[3].bias[[2, 5]] = -100.0  # hidden units 2 and 5 neither
    x = torch.randn(n, 2, 3, 3, dtype=torch.float64)
    awake = x.clone()
    awake[:4, :, :2, :2] = 200.0 * model[0].weight[1].detach().sign()
    return model, x, awake


@pytest.mark.parametrize("method", ["kfac", "ekfac"])
def test_skipped_dead_directions_change_no_score(method: str) -> None:
    """With dead ReLU units (variance exactly 0 in the fit), the data passes skip their
    eigen-directions; self-influence still equals the diagonal of the pairwise scores (whose
    IHVP uses every direction), also for inputs that wake a dead unit (the full-basis path)."""
    from influence_core import pairwise_influence, self_influence

    model, x, awake = _dead_unit_model(30)
    data = tensor_dataset(x, torch.randint(0, 3, (30,)), 3)
    tracked, task = TrackedModel(model), ClassificationTask()
    curv = fit_curvature(method, tracked, task, data, EKFACConfig() if method == "ekfac"
                         else KFACConfig())
    kept = [(len(rot.s.dirs), len(rot.a.dirs)) for rot, _, _ in curv._rotation_bases()]
    assert kept[0][0] == 3 and kept[1] == (4, 13) and kept[2][1] == 5  # dead ones skipped
    for inputs in (x, awake):
        probe = tensor_dataset(inputs, data.labels, 3)
        idx = torch.arange(10)
        pair = pairwise_influence(curv, task, inputs[idx], data.labels[idx], probe, indices=idx)
        selfi = self_influence(curv, task, probe, indices=idx)
        torch.testing.assert_close(pair.diagonal(), selfi, rtol=1e-9, atol=0)


def test_eigenvalue_pass_skips_dead_directions_exactly() -> None:
    """The fit's pass 2 with pass 1's zero-eigenvalue masks (dead ReLU units skipped)
    gives the same Lambda as rotating every batch in the full basis, also when pass 2 sees
    inputs that wake a dead unit (the full-basis fallback)."""
    from influence_core.curvature.fit import fit_bases, fit_eigenvalues, shards

    model, x, awake = _dead_unit_model(40)
    labels = torch.randint(0, 3, (40,))
    tracked, task, cfg = TrackedModel(model), ClassificationTask(), EKFACConfig(batch_size=8)
    parts = shards(40, 16)
    bases = fit_bases(tracked, task, tensor_dataset(x, labels, 3), cfg, parts)
    assert bases[0][3].sum() == 1 and bases[1][2].sum() >= 2  # the dead directions were found
    for inputs in (x, awake):
        data = tensor_dataset(inputs, labels, 3)
        skipped = fit_eigenvalues(tracked, task, data, cfg, parts, bases)
        whole = fit_eigenvalues(tracked, task, data, cfg, parts,
                                [(q_a, q_s, None, None) for q_a, q_s, _, _ in bases])
        for got, want in zip(skipped, whole):
            torch.testing.assert_close(got.eigenvalues, want.eigenvalues, rtol=1e-12, atol=0)


@pytest.mark.parametrize("shard_size", [4096, 32])
def test_library_and_precompute_fit_the_same_ekfac(shard_size: int, artifacts_home) -> None:
    """One fit (curvature.fit) behind fit_curvature("ekfac") and the precompute: the same
    EKFACConfig, fit subsets included, gives the same eigenbases, eigenvalues and damping for a
    conv and a linear layer. Bit for bit when the precompute takes the examples in one shard
    (the library's) of the same (channels-last) model; to float64 round-off in shards of 32,
    whose float64 sums are added in another order. K-FAC's bases are EK-FAC's."""
    from influence_core import IndexConfig, precompute
    from influence_core.artifacts import load_tensors
    from influence_core.config import TrainConfig
    from influence_core.data.models import channels_last
    from influence_core.data.registry import Problem

    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 3 * 3, 4)).double()
    train = tensor_dataset(torch.randn(70, 2, 6, 6, dtype=torch.float64),
                           torch.randint(0, 4, (70,)), 4)
    test = tensor_dataset(torch.randn(5, 2, 6, 6, dtype=torch.float64), torch.arange(5) % 4, 4)
    problem = Problem(TrainConfig(dataset="toy", model="toy"), model, train, test,
                      torch.zeros(70, dtype=torch.bool), {})
    cfg = EKFACConfig(batch_size=16, seed=3, max_examples=60, covariance_max_examples=45)
    folder = precompute(problem, "ekfac", cfg, IndexConfig(dim=10**6, shard_size=shard_size))
    saved = load_tensors(folder / "factors.safetensors")
    # the precompute fits a channels-last copy of the model (its conv sums in another order)
    tracked, task = TrackedModel(channels_last(copy.deepcopy(model))), ClassificationTask()
    library = fit_curvature("ekfac", tracked, task, train, cfg).factors
    assert len(library) == 2 and library[0].eigenvalues.shape == (3, 2 * 9 + 1)
    tol = {"rtol": 0, "atol": 0} if shard_size == 4096 else {"rtol": 1e-12, "atol": 1e-13}
    for i, f in enumerate(library):
        for got, key in ((f.q_a, "q_a"), (f.q_s, "q_s")):
            want = saved[f"{i}.{key}"]
            largest = got.gather(0, got.abs().argmax(0, keepdim=True))
            assert (largest > 0).all()  # each eigenvector's canonical sign
            torch.testing.assert_close(got, want, **tol)
        torch.testing.assert_close(f.eigenvalues, saved[f"{i}.eigenvalues"], **tol)
        assert f.damping == pytest.approx(float(saved[f"{i}.damping"]), rel=tol["rtol"], abs=0)
        assert f.damping == pytest.approx(0.1 * float(f.eigenvalues.mean()), rel=1e-12)
    kfac = fit_curvature("kfac", tracked, task, train, KFACConfig(**vars(cfg))).factors
    for k, e in zip(kfac, library):
        assert torch.equal(k.q_a, e.q_a) and torch.equal(k.q_s, e.q_s)
