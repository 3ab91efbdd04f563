"""Influence scores: internal consistency and counterfactual truth (leave-one-out retraining)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from torch import nn

from influence_core import (
    ClassificationTask,
    EKFACConfig,
    ExactConfig,
    TrackedModel,
    fit_curvature,
    load_dataset,
    pairwise_influence,
    query_gradients,
    self_influence,
    top_k,
    train_gradients,
)
from influence_core.config import TrainConfig
from influence_core.curvature.gradients import forward_capture, weight_matrix, weight_of
from influence_core.data.training import train_model

LOO_PEARSON = 0.95  # predicted vs actual change of query loss, convex model
SELF_SPEARMAN = 0.99  # EK-FAC vs exact self-influence ranking (measured 0.999)
PAIRWISE_MARGIN = 0.2  # EK-FAC's pairwise Spearman with exact exceeds identity's by this much
DIAG_TOL = 1e-9


@pytest.fixture(scope="module")
def digits():
    train, test = load_dataset("digits")
    return train, test


@pytest.fixture(scope="module")
def small_mlp(digits):
    """64-16-10 MLP on digits (1210 parameters: exact G is cheap), float64."""
    train, _ = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    cfg = TrainConfig(epochs=20, seed=0)
    return train_model(model, train, cfg).double().eval()


@pytest.mark.parametrize("method", ["exact", "kfac", "ekfac", "identity", "lissa"])
def test_self_influence_is_diagonal_of_pairwise(method, small_mlp, digits) -> None:
    train, _ = digits
    task, tracked = ClassificationTask(), TrackedModel(small_mlp)
    cfgs = {"exact": ExactConfig(damping=0.01), "lissa": None}
    from influence_core import LissaConfig

    cfgs["lissa"] = LissaConfig(depth=30, damping=0.05, scale=20.0, batch_size=len(train))
    curv = fit_curvature(method, tracked, task, train, cfgs.get(method))
    idx = torch.arange(12)
    pair = pairwise_influence(curv, task, train.tensor(idx), train.labels[idx], train, indices=idx)
    selfi = self_influence(curv, task, train, indices=idx)
    assert torch.allclose(pair.diagonal(), selfi, rtol=1e-6 if method == "lissa" else DIAG_TOL)
    assert (selfi > 0).all()


@pytest.mark.parametrize("method", ["ekfac", "exact"])
def test_scores_do_not_depend_on_batch_size(method, small_mlp, digits) -> None:
    train, test = digits
    task, tracked = ClassificationTask(), TrackedModel(small_mlp)
    curv = fit_curvature(method, tracked, task, train, {"ekfac": EKFACConfig(fisher="expected"),
                                                         "exact": ExactConfig()}[method])
    q = torch.arange(3)
    a = pairwise_influence(curv, task, test.tensor(q), test.labels[q], train, batch_size=7)
    b = pairwise_influence(curv, task, test.tensor(q), test.labels[q], train, batch_size=1000)
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    s1 = self_influence(curv, task, train, batch_size=13)
    s2 = self_influence(curv, task, train, batch_size=600)
    assert torch.allclose(s1, s2, rtol=1e-9)
    # and the fitted curvature does not depend on the fitting batch size either
    refit = fit_curvature("ekfac", tracked, task, train,
                          EKFACConfig(fisher="expected", batch_size=33))
    if method == "ekfac":
        assert torch.allclose(refit.ihvp(torch.eye(5, tracked.num_params, dtype=torch.float64)),
                              curv.ihvp(torch.eye(5, tracked.num_params, dtype=torch.float64)),
                              rtol=1e-6, atol=1e-10)


def test_per_example_gradients_match_a_loop() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 3 * 3, 4)).double()
    x, y = torch.randn(5, 2, 5, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0])
    tracked, task = TrackedModel(model), ClassificationTask()
    from influence_core.curvature import Identity

    batched = query_gradients(Identity(tracked), task, x, y)
    for i in range(5):
        model.zero_grad()
        task.loss(model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        loop = torch.cat([torch.cat([weight_matrix(m, m.weight.grad),
                                     m.bias.grad[:, None]], 1).flatten()
                          for m in (model[0], model[3])])
        assert torch.allclose(batched[i], loop, atol=1e-12)


def _fit_logreg(x: torch.Tensor, y: torch.Tensor, wd: float, init: torch.Tensor | None = None):
    model = nn.Linear(x.shape[1], 10).double()
    if init is not None:
        with torch.no_grad():
            model.weight.copy_(init[:, :-1])
            model.bias.copy_(init[:, -1])
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=300, tolerance_grad=1e-12,
                            tolerance_change=1e-14, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        w = torch.cat([model.weight, model.bias[:, None]], 1)
        loss = nn.functional.cross_entropy(model(x), y) + 0.5 * wd * w.pow(2).sum()
        loss.backward()
        return loss

    for _ in range(1 if init is not None else 3):
        opt.step(closure)
    return model


def test_leave_one_out_on_convex_model(digits) -> None:
    """Logistic regression with L2 weight wd: its Hessian is exactly G + wd I (a linear model's
    cross-entropy Hessian is its Gauss-Newton matrix), so exact influence with damping wd must
    predict real leave-one-out retraining."""
    train, test = digits
    n, wd = 200, 1e-2
    x = train.tensor(torch.arange(n)).double().flatten(1)
    y = train.labels[:n]
    model = _fit_logreg(x, y, wd)
    theta = torch.cat([model.weight, model.bias[:, None]], 1).detach()
    flat = nn.Sequential(nn.Flatten(), model)
    tracked, task = TrackedModel(flat), ClassificationTask()
    sub = train.with_labels(train.labels)
    sub_idx = torch.arange(n)
    sub.tensor = lambda idx: x[idx].reshape(-1, 1, 8, 8)
    sub.labels, sub.original_labels = y, y
    curv = fit_curvature("exact", tracked, task, sub, ExactConfig(damping=wd))
    qx, qy = test.tensor(torch.arange(2)).double(), test.labels[:2]
    scores = pairwise_influence(curv, task, qx, qy, sub)  # (2, n)
    removed = torch.cat([top_k(scores[0], 6)[0].indices, top_k(scores[0], 6)[1].indices,
                         torch.arange(0, n, 25)])
    base_loss = task.loss(flat(qx), qy).detach()
    predicted, actual = [], []
    for i in removed.tolist():
        keep = sub_idx != i
        loo = _fit_logreg(x[keep], y[keep], wd, init=theta)
        with torch.no_grad():
            actual.append(float(task.loss(loo(qx.flatten(1)), qy)[0] - base_loss[0]))
        predicted.append(float(scores[0, i]) / n)
    r = pearsonr(predicted, actual)[0]
    assert r >= LOO_PEARSON, r


def test_ekfac_against_exact_on_small_mlp(small_mlp, digits) -> None:
    """Self-influence rankings agree almost perfectly; pairwise scores only partly (the
    Kronecker approximation's block error is ~45% here), but far better than identity."""
    train, test = digits
    task, tracked = ClassificationTask(), TrackedModel(small_mlp)
    exact = fit_curvature("exact", tracked, task, train, ExactConfig())
    ekfac = fit_curvature("ekfac", tracked, task, train, EKFACConfig(damping=exact.damping))
    ident = fit_curvature("identity", tracked, task, train)
    assert spearmanr(self_influence(exact, task, train),
                     self_influence(ekfac, task, train))[0] >= SELF_SPEARMAN
    q = torch.arange(0, 360, 36)
    args = (test.tensor(q).double(), test.labels[q], train)
    s_exact = pairwise_influence(exact, task, *args)
    rho = {name: sum(spearmanr(s_exact[j], c[j])[0] for j in range(len(q))) / len(q)
           for name, c in (("ekfac", pairwise_influence(ekfac, task, *args)),
                           ("identity", pairwise_influence(ident, task, *args)))}
    assert rho["ekfac"] >= rho["identity"] + PAIRWISE_MARGIN, rho


def test_train_gradients_match_query_gradients_for_loss(small_mlp, digits) -> None:
    train, _ = digits
    tracked = TrackedModel(small_mlp)
    curv = fit_curvature("identity", tracked, ClassificationTask(), train)
    idx = torch.arange(4)
    a = train_gradients(curv, ClassificationTask(), train, idx)
    b = query_gradients(curv, ClassificationTask(), train.tensor(idx), train.labels[idx])
    assert torch.allclose(a, b)


def test_removing_helpful_points_hurts_more_than_random(digits) -> None:
    """The sign convention, proven by retraining: dropping the k most HELPFUL training points
    raises the query's loss more than dropping k random ones (and dropping the most HARMFUL
    ones lowers it relative to random)."""
    train, test = digits
    cfg = TrainConfig(epochs=15, seed=0)

    def trained(indices: torch.Tensor | None) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        return train_model(model, train, cfg, indices).eval()

    base = trained(None)
    task = ClassificationTask()
    curv = fit_curvature("ekfac", TrackedModel(base), task, train)
    q = torch.tensor([int(i) for i in torch.nonzero(base(test.tensor(slice(None))).argmax(1)
                                                      != test.labels)[:3, 0]])
    scores = pairwise_influence(curv, task, test.tensor(q), test.labels[q], train)
    k, gen = 40, torch.Generator().manual_seed(0)
    deltas = {"helpful": [], "random": [], "harmful": []}
    for j in range(len(q)):
        helpful, harmful = top_k(scores[j], k)
        for name, drop in (("helpful", helpful.indices), ("harmful", harmful.indices),
                           ("random", torch.randperm(len(train), generator=gen)[:k])):
            keep = torch.ones(len(train), dtype=torch.bool)
            keep[drop] = False
            model = trained(torch.nonzero(keep)[:, 0])
            with torch.no_grad():
                loss = task.loss(model(test.tensor(q[j : j + 1])), test.labels[q[j : j + 1]])
            deltas[name].append(float(loss))
    mean = {k_: sum(v) / len(v) for k_, v in deltas.items()}
    assert mean["helpful"] > mean["random"] > mean["harmful"], mean


def test_gradients_taken_in_two_threads_at_once_are_each_their_own(small_mlp, digits) -> None:
    """Capture hooks live on shared modules; a forward in another thread must not overwrite
    this thread's activations (the app prefetches in the background while a page computes)."""
    train, _ = digits
    task, tracked = ClassificationTask(), TrackedModel(small_mlp)
    curv = fit_curvature("identity", tracked, task, train)
    parts = [torch.arange(0, 200), torch.arange(600, 800)]
    serial = [train_gradients(curv, task, train, idx) for idx in parts]
    barrier = threading.Barrier(2)

    def run(idx: torch.Tensor) -> list[torch.Tensor]:
        barrier.wait()
        return [train_gradients(curv, task, train, idx) for _ in range(20)]

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, parts))
    for got, want in zip(results, serial):
        assert all(torch.equal(g, want) for g in got)


def test_reduced_precision_capture_is_this_thread_s_only(small_mlp, digits) -> None:
    """inputs_in (self-influence and the fit passes capture inputs in their rotation dtype)
    holds in its own thread: another thread scoring on the same model at that moment captures
    full precision."""
    train, _ = digits
    tracked = TrackedModel(small_mlp)
    x = train.tensor(torch.arange(4)).double()
    inside, outside = threading.Event(), threading.Event()
    seen = {}

    def low() -> None:
        with tracked.inputs_in(torch.float32):
            inside.set()
            outside.wait(10)
            seen["low"] = forward_capture(tracked, x)[0]["1"][0].dtype
        seen["after"] = forward_capture(tracked, x)[0]["1"][0].dtype

    def full() -> None:
        inside.wait(10)
        seen["other"] = forward_capture(tracked, x)[0]["1"][0].dtype
        outside.set()

    with ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(low), pool.submit(full)]:
            f.result()
    assert seen == {"low": torch.float32, "other": torch.float64, "after": torch.float64}


@pytest.mark.parametrize("conv", [
    dict(kernel_size=3), dict(kernel_size=(3, 5), stride=2, padding=(1, 2), dilation=(1, 2)),
    dict(kernel_size=5, padding="same"), dict(kernel_size=3, padding="valid", bias=False),
    dict(kernel_size=4, padding="same", dilation=2),
])
def test_captured_conv_patches_reproduce_the_convolution(conv) -> None:
    """The captured input of a Conv2d (patches, bias column) times the flat weight is its output,
    for strides, padding (also "same" / "valid"), dilation, no bias, and channels-last input."""
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 4, **conv).double()
    tracked = TrackedModel(nn.Sequential(layer))
    for x in (torch.randn(2, 3, 17, 15, dtype=torch.float64),
              torch.randn(2, 3, 17, 15, dtype=torch.float64).contiguous(
                  memory_format=torch.channels_last)):
        with tracked.capture() as store:
            out = layer(x)
        patches = store["0"][0]
        w = weight_matrix(layer, layer.weight)
        if layer.bias is not None:
            w = torch.cat([w, layer.bias[:, None]], 1)
        torch.testing.assert_close(patches @ w.T, out.flatten(2).transpose(1, 2))


def test_parameter_layout_round_trips_through_the_modules() -> None:
    """flat_params -> as_params gives back each module's own tensors; add_to_params moves each
    weight entry by the delta at its position in the layout (conv columns in (kh, kw, C)
    order, checked against a hand-indexed entry)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, (2, 3)), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * 3 * 2, 4)).double()
    tracked = TrackedModel(model)
    params = tracked.as_params(tracked.flat_params())
    for name, value in model.named_parameters():
        assert torch.equal(params[name], value)
    conv = model[0]
    assert torch.equal(weight_of(conv, weight_matrix(conv, conv.weight)), conv.weight)
    before = conv.weight.detach().clone()
    delta = torch.zeros(tracked.num_params, dtype=torch.float64)
    # row 1, kernel offset (kh=1, kw=2), channel 0: column (1 * 3 + 2) * 3 + 0 of the matrix
    d_in = tracked.specs[0].d_in
    delta[1 * d_in + (1 * 3 + 2) * 3 + 0] = 1.0
    tracked.add_to_params(delta)
    moved = (conv.weight.detach() - before).nonzero().tolist()
    assert moved == [[1, 0, 1, 2]]


def test_tune_runtime_applies_both_settings_on_glibc() -> None:
    """The CLI and app call it once; on Linux with glibc both settings must take."""
    import platform

    from influence_core import tune_runtime

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert tune_runtime() == {"flush_denormal": True, "keep_freed_memory": True}
