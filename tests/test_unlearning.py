"""Newton-step unlearning against real retraining on a convex model, and the audit session.

The convex model is multinomial logistic regression (one nn.Linear on the 8x8 digits, float64)
trained to convergence with L-BFGS on mean cross-entropy + (WD / 2) |theta|^2. Its Gauss-Newton
matrix is its Hessian, so the exact curvature with damping = WD is the Hessian of the objective
and one Newton step must track retraining closely."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from torch import nn

from influence_core import (
    ClassificationTask,
    EKFACConfig,
    ExactConfig,
    TrackedModel,
    fit_curvature,
)
from influence_core.attribution.scores import train_gradients
from influence_core.audit.session import AuditSession
from influence_core.audit.store import DecisionLog
from influence_core.audit.unlearning import edited_objective, newton_step, refine, updated_model
from influence_core.data.registry import load_dataset

WD = 1e-2  # L2 strength = damping of the exact curvature
COSINE_MIN = 0.9  # Newton delta vs retrained delta
PEARSON_MIN = 0.95  # predicted vs actual test-loss change across removal sets
REFINED_GAIN = 0.5  # refinement at least halves the one-step error
N_FLIPS = 12


def _fit(model: nn.Module, data, indices: torch.Tensor, labels: torch.Tensor) -> nn.Module:
    """Minimise mean CE over `indices` + WD/2 |theta|^2 with L-BFGS, from model's weights."""
    x = data.tensor(indices).double()
    y = labels[indices]
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=200, tolerance_grad=1e-11,
                            tolerance_change=1e-14, history_size=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss = loss + WD / 2 * sum(p.pow(2).sum() for p in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    return model.eval()


def _theta(model: nn.Module) -> torch.Tensor:
    return TrackedModel(model).flat_params().double()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny float64 problems run ~40x faster on one thread on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def convex() -> types.SimpleNamespace:
    train, test = load_dataset("digits")
    gen = torch.Generator().manual_seed(0)
    flips = torch.randperm(len(train), generator=gen)[:N_FLIPS]
    noisy = train.labels.clone()
    noisy[flips] = (noisy[flips] + 1 + torch.randint(0, 9, (N_FLIPS,), generator=gen)) % 10
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).double()
    all_idx = torch.arange(len(train))
    _fit(model, train, all_idx, train.labels)
    task = ClassificationTask()
    curv = fit_curvature("exact", TrackedModel(model), task, train, ExactConfig(damping=WD))
    return types.SimpleNamespace(train=train, test=test, model=model, task=task, curv=curv,
                                 flips=flips, noisy=noisy, all=all_idx)


def _retrained(c, indices: torch.Tensor, labels: torch.Tensor, start: nn.Module) -> nn.Module:
    import copy

    return _fit(copy.deepcopy(start), c.train, indices, labels)  # convex: warm start is exact


def _test_loss(model: nn.Module, c) -> float:
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(c.test.tensor(slice(None)).double()),
                                                 c.test.labels))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def test_newton_step_matches_the_ihvp_of_per_example_gradients(convex) -> None:
    remove, relabel = [5, 17, 40], {8: (int(convex.train.labels[8]) + 3) % 10}
    delta = newton_step(convex.curv, convex.task, convex.train, remove, relabel)
    g = train_gradients(convex.curv, convex.task, convex.train, torch.tensor([*remove, 8])).sum(0)
    g_new = train_gradients(convex.curv, convex.task, convex.train.with_labels(
        torch.tensor([relabel.get(i, int(y)) for i, y in enumerate(convex.train.labels)])),
        torch.tensor([8]))[0]
    expected = convex.curv.ihvp((g - g_new)[None])[0] / (len(convex.train) - len(remove))
    torch.testing.assert_close(delta, expected.double(), rtol=1e-9, atol=1e-12)


def test_removal_tracks_retraining_on_a_convex_model(convex) -> None:
    theta = _theta(convex.model)
    gen = torch.Generator().manual_seed(1)
    predicted, actual, cosines = [], [], []
    base_loss = _test_loss(convex.model, convex)
    for size in (5, 10, 20, 40, 60):
        remove = torch.randperm(len(convex.train), generator=gen)[:size]
        keep = convex.all[~torch.isin(convex.all, remove)]
        delta = newton_step(convex.curv, convex.task, convex.train, remove.tolist(),
                            weight_decay=WD)
        retrained = _retrained(convex, keep, convex.train.labels, convex.model)
        cosines.append(_cosine(delta, _theta(retrained) - theta))
        predicted.append(_test_loss(updated_model(convex.curv, delta), convex) - base_loss)
        actual.append(_test_loss(retrained, convex) - base_loss)
    pearson = float(torch.corrcoef(torch.tensor([predicted, actual]))[0, 1])
    assert min(cosines) > COSINE_MIN, cosines
    assert pearson >= PEARSON_MIN, (pearson, predicted, actual)


def _noisy_setup(convex):
    """The model trained on the noisy labels, its curvature, and the retrained-on-clean one."""
    import copy

    noisy_model = _retrained(convex, convex.all, convex.noisy, convex.model)
    noisy_train = convex.train.with_labels(convex.noisy)
    curv = fit_curvature("exact", TrackedModel(noisy_model), convex.task, noisy_train,
                         ExactConfig(damping=WD))
    clean = _retrained(convex, convex.all, convex.train.labels, copy.deepcopy(noisy_model))
    repair = {int(i): int(convex.train.labels[i]) for i in convex.flips}
    return noisy_model, noisy_train, curv, clean, repair


def test_relabel_sign_moves_toward_retraining_and_the_papers_sign_moves_away(convex) -> None:
    noisy_model, noisy_train, curv, clean, repair = _noisy_setup(convex)
    theta, target = _theta(noisy_model), _theta(clean)
    delta = newton_step(curv, convex.task, noisy_train, relabel=repair)
    nothing = float((theta - target).norm())
    assert float((theta + delta - target).norm()) < 0.5 * nothing
    assert float((theta - delta - target).norm()) > nothing  # Section 8's sign
    assert _cosine(delta, target - theta) > COSINE_MIN


def test_refinement_converges_toward_retraining(convex) -> None:
    noisy_model, noisy_train, curv, clean, repair = _noisy_setup(convex)
    theta, target = _theta(noisy_model), _theta(clean)
    delta = newton_step(curv, convex.task, noisy_train, relabel=repair)
    refined = refine(curv, convex.task, noisy_train, delta, relabel=repair, steps=3,
                     weight_decay=WD)
    one_step = float((theta + delta - target).norm())
    assert float((theta + refined - target).norm()) < REFINED_GAIN * one_step


@pytest.fixture(scope="module")
def tiny_mlp() -> types.SimpleNamespace:
    """A non-convex 64-16-10 MLP (float64) fitted briefly on 300 digits, and a nearly undamped
    EK-FAC: its full preconditioned step overshoots, so only a line search keeps J in check."""
    train, _ = load_dataset("digits")
    idx = torch.arange(300)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = train.tensor(idx).double(), train.labels[idx]
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    from influence_core.data.datasets import subset

    data, task = subset(train, idx), ClassificationTask()
    curv = fit_curvature("ekfac", TrackedModel(model), task, data, EKFACConfig(damping=1e-8))
    return types.SimpleNamespace(model=model, train=data, task=task, curv=curv)


def _objective(c, delta: torch.Tensor, remove: list[int], relabel: dict[int, int]) -> float:
    model = updated_model(c.curv, delta)
    return edited_objective(TrackedModel(model), c.task, c.train, remove, relabel, WD)[0]


def test_refinement_never_increases_the_edited_objective(tiny_mlp) -> None:
    c, flip = tiny_mlp, lambda i: (int(tiny_mlp.train.labels[i]) + 1) % 10
    for remove, relabel in [(list(range(0, 30, 3)), {}), ([], {i: flip(i) for i in range(40, 70)}),
                            ([5, 6], {80: flip(80)})]:
        delta = newton_step(c.curv, c.task, c.train, remove, relabel, weight_decay=WD)
        for start in (delta, 30 * delta):  # a poor starting point too
            before = _objective(c, start, remove, relabel)
            _, grad = edited_objective(TrackedModel(updated_model(c.curv, start)), c.task,
                                       c.train, remove, relabel, WD, with_grad=True)
            full_step = start - c.curv.ihvp(grad[None])[0]
            refined = refine(c.curv, c.task, c.train, start, remove, relabel, steps=3,
                             weight_decay=WD)
            after = _objective(c, refined, remove, relabel)
            assert after <= before, (remove, relabel, before, after)
            if start is delta:  # the unguarded full step makes J worse: the guard matters
                assert _objective(c, full_step, remove, relabel) > before


def test_bad_edits_are_refused(convex) -> None:
    n = len(convex.train)
    for remove, relabel, message in [
        ([n], {}, "outside the training set"), ([], {3: 10}, "outside 0..9"),
        ([], {3: int(convex.train.labels[3])}, "already has label"),
        ([3], {3: (int(convex.train.labels[3]) + 1) % 10}, "both removed and relabelled"),
        ([4, 4], {}, "removed twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            newton_step(convex.curv, convex.task, convex.train, remove, relabel)


def _session(convex, path: Path) -> AuditSession:
    problem = types.SimpleNamespace(model=convex.model, train=convex.train, test=convex.test)
    log = DecisionLog(path, convex.train.labels, convex.train.num_classes)
    return AuditSession(problem, convex.curv, log, convex.task, suspects=torch.arange(200))


def _weights(state) -> list[torch.Tensor]:
    return list(state.model.state_dict().values())


def test_undo_restores_weights_exactly_and_replay_is_identical(convex, tmp_path: Path) -> None:
    session = _session(convex, tmp_path / "log.db")
    base = _weights(session.state())
    assert all(torch.equal(a, b) for a, b in zip(base, convex.model.state_dict().values()))
    session.record(3, "remove", annotator="ann")
    session.record(7, "relabel", (int(convex.train.labels[7]) + 2) % 10, annotator="ann")
    before = session.state()
    last = session.record(11, "remove", annotator="bob")
    after = session.state()
    assert not all(torch.equal(a, b) for a, b in zip(_weights(before), _weights(after)))
    session.undo(last.id)
    undone = session.state()
    assert undone.version == last.id + 1 and not undone.removed[11]
    assert all(torch.equal(a, b) for a, b in zip(_weights(before), _weights(undone)))
    fresh = _session(convex, tmp_path / "log.db").state()  # no cache: recomputed from the log
    assert all(torch.equal(a, b) for a, b in zip(_weights(undone), _weights(fresh)))
    assert fresh.removed.sum() == 1 and fresh.labels[7] != convex.train.labels[7]
    assert 3 not in fresh.suspects.tolist() and len(fresh.suspects) == 199
    assert bool((fresh.suspect_scores[:-1] >= fresh.suspect_scores[1:]).all())


def test_export_writes_labels_and_a_loadable_checkpoint(convex, tmp_path: Path) -> None:
    session = _session(convex, tmp_path / "log.db")
    session.record(5, "remove", annotator="ann")
    csv_path, ckpt = session.export(tmp_path / "out")
    lines = csv_path.read_text().splitlines()
    assert len(lines) == len(convex.train) + 1 and lines[6].split(",")[3] == "1"
    state = torch.load(ckpt, weights_only=True)
    assert all(torch.equal(a, b) for a, b in zip(state.values(), _weights(session.state())))


def test_newton_damping_is_the_explicit_value_else_1000_weight_decays() -> None:
    from influence_core.audit.unlearning import UNLEARNING_DAMPING, newton_damping

    assert UNLEARNING_DAMPING == 1000.0
    recipe_with = types.SimpleNamespace(weight_decay=5e-4)
    assert newton_damping(recipe_with) == pytest.approx(0.5)
    assert newton_damping(recipe_with, 0.02) == 0.02  # an explicit value wins
    assert newton_damping(types.SimpleNamespace(weight_decay=0.0)) == pytest.approx(1.0)
    assert newton_damping(None) == pytest.approx(1.0)  # no recipe: 1e-3 stands in for wd
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="damping"):
            newton_damping(recipe_with, bad)


def test_unlearn_damping_reaches_the_sessions_curvature(artifacts_home, tmp_path: Path,
                                                         monkeypatch, capsys) -> None:
    """`unlearn --damping L` fits the Newton step's curvature with lambda = L; without it the
    session gets newton_damping's default for the recipe; a non-positive value is refused."""
    import influence_core.audit.session as session_mod
    from influence_core.audit.unlearning import newton_damping
    from influence_core.cli import main
    from influence_core.config import recipe

    seen = []
    real_fit = session_mod.fit_curvature

    def recording_fit(method, tracked, task, data, cfg=None, progress=None):
        seen.append((method, cfg.damping))
        return real_fit(method, tracked, task, data, cfg, progress=progress)

    monkeypatch.setattr(session_mod, "fit_curvature", recording_fit)
    common = ["unlearn", "--epochs", "2", "--method", "kfac", "--keep", "3"]
    assert main([*common, "--damping", "0.25", "--log", str(tmp_path / "a.db")]) == 0
    assert main([*common, "--log", str(tmp_path / "b.db")]) == 0
    default = newton_damping(recipe("digits", "mlp", epochs=2))
    assert seen == [("kfac", 0.25), ("kfac", pytest.approx(default))]
    with pytest.raises(SystemExit):
        main([*common, "--damping", "0"])
    assert "must be > 0" in capsys.readouterr().err


def test_the_session_reuses_the_index_fit_under_its_own_damping(artifacts_home) -> None:
    """open_audit hands the attribution index's EK-FAC to the Newton step with the step's own
    damping: the same inverse as fitting EK-FAC again for the session."""
    from influence_core import load_problem, open_index, open_session, recipe
    from influence_core.attribution.index import index_curvature

    problem = load_problem(recipe("digits", "mlp", epochs=3))
    index = open_index(problem)
    own = open_session(problem, "ekfac", artifacts_home / "a.db")
    reused = open_session(problem, "ekfac", artifacts_home / "b.db", fitted=index_curvature(index))
    assert {f.damping for f in reused.curvature.factors} == {own.curvature.factors[0].damping}
    torch.manual_seed(0)
    vectors = [torch.randn(3, *f.eigenvalues.shape) for f in own.curvature.factors]
    a, b = own.curvature.ihvp_layers(vectors), reused.curvature.ihvp_layers(vectors)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
