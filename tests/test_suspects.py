"""Training-dynamics signals (audit/dynamics.py) and the suggested label (audit/suggest.py):
computed by hand on constructed values, and the suggestion checked against the clean labels of
flipped digits."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from influence_core.audit.dynamics import Dynamics
from influence_core.audit.suggest import best_other, class_support
from influence_core.data.datasets import ImageDataset


def _data(labels: list[int], classes: int = 3) -> ImageDataset:
    """Example i's pixels: a one-hot row at column i (so a Fixed model can tell them apart)."""
    y = torch.tensor(labels)
    pixels = torch.zeros(len(y), 1, 4, dtype=torch.uint8)
    pixels[torch.arange(len(y)), 0, torch.arange(len(y))] = 255
    return ImageDataset("toy", "train", [str(c) for c in range(classes)], y, (0.0,), (1.0,),
                        pixels=pixels)


class Fixed(nn.Module):
    """Returns the same logits for the i-th example of every batch (inputs are one-hot rows)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x[:, 0, 0, :].argmax(1)
        return self.logits[rows]


def test_dynamics_signals_by_hand() -> None:
    data = _data([0, 1, 2])
    steps = [torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 0.0]]),  # ex 2: a tie, not its label
             torch.tensor([[0.0, 2, 0], [0, 2.0, 0], [1, 0, 0.0]]),  # ex 0 forgotten
             torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [2, 0, 0.0]])]
    dyn = Dynamics.of([Fixed(s) for s in steps], data)

    def margin(z, y):
        others = torch.cat([z[:y], z[y + 1:]])
        return float(z[y] - torch.logsumexp(others, 0))
    want_aum = [-np.mean([margin(s[i], y) for s in steps]) for i, y in enumerate([0, 1, 2])]
    np.testing.assert_allclose(dyn.aum().numpy(), want_aum, rtol=1e-6)  # float32 logits
    f = dyn.forgetting().numpy()
    assert math.floor(f[0]) == 1 and math.floor(f[1]) == 0  # one forgetting event, none
    assert math.floor(f[2]) == 3  # never predicted as its label: P events
    assert (f - np.floor(f) <= 0.5).all()  # the aum tie-breaker stays below one event
    want_loss = [np.mean([float(nn.functional.cross_entropy(s[i:i + 1], torch.tensor([y])))
                          for s in steps]) for i, y in enumerate([0, 1, 2])]
    np.testing.assert_allclose(dyn.loss().numpy(), want_loss, rtol=1e-6)
    np.testing.assert_allclose(dyn.mean_probs.sum(1).numpy(), 1.0, rtol=1e-12)


def test_best_other_never_returns_the_given_label() -> None:
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])
    assert best_other(probs, torch.tensor([0, 2, 1])).tolist() == [1, 1, 2]


def test_class_support_compares_classes_on_one_scale() -> None:
    """Class 1's scores are 100x larger but spread 100x wider: raw support favours it, the
    normalised support favours class 0, whose top scores stand out from its own spread."""
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 200, generator=gen, dtype=torch.float64)
    scores = torch.stack([noise[0] * 0.1, noise[1] * 10.0])
    scores[0, :3] = 5.0  # three training examples strongly support class 0
    raw, norm = class_support(scores, 3, normalise=False), class_support(scores, 3)
    assert raw.argmax() == 1 and norm.argmax() == 0


@pytest.mark.parametrize("kind", ["uniform", "pair"])
def test_the_cards_suggestion_is_mostly_the_clean_label_of_a_flip(kind: str,
                                                                   artifacts_home) -> None:
    """digits/mlp with 10% flips: app_api.evidence's suggestion (the model's most probable other
    class) is the clean label of most flipped examples; the old rule (largest raw index
    support) was right for 1 of 144."""
    from influence_core import evidence, load_problem, open_index, recipe

    problem = load_problem(recipe("digits", "mlp", noise=0.1, noise_kind=kind))
    index = open_index(problem)
    flipped = torch.nonzero(problem.flip_mask)[:, 0][:40].tolist()
    right = [evidence(index, problem.train, i, int(problem.train.labels[i])).suggested
             == int(problem.train.original_labels[i]) for i in flipped]
    assert np.mean(right) >= 0.8, np.mean(right)


def test_trajectory_signals_reuse_the_recipes_own_run(artifacts_home, monkeypatch) -> None:
    """The model's own training keeps the checkpoints the trajectory and dynamics signals read:
    they load without another training, their last checkpoint is the model itself, and they
    equal a separate run of the recipe (the fallback when the run kept none)."""
    import influence_core.audit.suspects as suspects
    from influence_core import load_problem, recipe
    from influence_core.data.training import snapshot_steps, total_steps

    cfg = recipe("digits", "mlp", noise=0.1, epochs=4)
    problem = load_problem(cfg)
    data, _, _ = suspects.training_set(problem)

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    with monkeypatch.context() as m:
        m.setattr(suspects, "train_model", no_training)
        geometric = suspects.trajectory(problem, 5)
        even = suspects._cached_train(problem, "even8", data, None, 8, even=True)
    final = problem.model.state_dict()
    for net in (geometric[-1], even[-1]):
        assert all(torch.equal(net.state_dict()[k], final[k]) for k in final)
    total = total_steps(cfg, len(data))  # 1437 digits, batches of 64, 4 epochs
    assert total == 4 * 23
    assert snapshot_steps(total, 5, False) == [6, 12, 23, 46, 92]
    assert snapshot_steps(total, 8, True) == [12, 23, 34, 46, 58, 69, 80, 92]
    # without the kept checkpoints, the fallback trains the same run: same weights
    for p in (artifacts_home / "models").glob("*/snapshots/*.pt"):
        p.unlink()
    again = suspects.trajectory(problem, 5)
    for a, b in zip(geometric, again):
        assert all(torch.allclose(a.state_dict()[k], b.state_dict()[k]) for k in final)
    early = geometric[0].state_dict()
    assert not all(torch.equal(early[k], final[k]) for k in final)


def test_the_suggester_averages_the_sources_its_session_has(artifacts_home) -> None:
    """Suggester: the rule's sources that the ranking made available, averaged; a user's
    checkpoint has no run of its own; the suggestion is the best other class of the average."""
    from influence_core import load_problem, recipe
    from influence_core.audit.suggest import FITTING_RULE, MEMORISING_RULE, Suggester, gate_rule
    from influence_core.audit.suspects import (
        cross_validated_probs,
        memorisation_gap,
        run_checkpoints,
    )
    from influence_core.data.datasets import subset

    problem = load_problem(recipe("digits", "mlp", epochs=4))
    app = Suggester(problem, "loss")  # the fit gate's rule for this model
    assert app.rule == gate_rule(memorisation_gap(problem))
    assert Suggester(problem, "loss", MEMORISING_RULE).parts == ["model", "checkpoints",
                                                                 "dynamics"]
    assert Suggester(problem, "loss", FITTING_RULE).parts == ["model"]
    assert Suggester(problem, "loss", "model+cv2").parts == ["model"]  # no 2-fold run at hand
    with_cv = Suggester(problem, "cv2_loss+checkpoint_loss", "model+cv2")
    assert with_cv.parts == ["model", "cv2"]
    current = np.full(10, 0.1)
    i = 7
    oos = cross_validated_probs(problem, 2)[i].double().numpy()
    np.testing.assert_allclose(with_cv.probs(i, current), (current + oos) / 2)
    one = subset(problem.train, torch.tensor([i]))
    snaps = run_checkpoints(problem, "dynamics")
    dyn = (sum(m(one.tensor([0])).softmax(1)[0].double() for m in snaps) / len(snaps)).detach()
    rule = Suggester(problem, "loss", "model+dynamics")
    np.testing.assert_allclose(rule.probs(i, current), (current + dyn.numpy()) / 2, atol=1e-6)
    given = int(problem.train.labels[i])
    expected = np.argsort(-(current + dyn.numpy()) / 2)
    assert rule.suggest(i, given, current) == next(c for c in expected if c != given)
    user = dataclasses.replace(problem, meta={**problem.meta, "checkpoint": "mine.pt"})
    assert Suggester(user, "loss").parts == ["model"]


def test_a_card_never_trains_for_its_suggestion(artifacts_home, monkeypatch) -> None:
    """A model whose training kept no checkpoints (an older version trained it): the
    suggestion leaves the checkpoint sources out instead of training them."""
    import influence_core.audit.suspects as suspects
    from influence_core import load_problem, recipe
    from influence_core.audit.suggest import Suggester

    problem = load_problem(recipe("digits", "mlp", epochs=2))
    for p in (artifacts_home / "models").glob("*/snapshots/*.pt"):
        p.unlink()

    def no_training(*args, **kwargs):
        raise AssertionError("trained for a card")

    monkeypatch.setattr(suspects, "train_model", no_training)
    current = np.linspace(0.0, 1.0, 10)
    current /= current.sum()
    rule = Suggester(problem, "loss")
    np.testing.assert_allclose(rule.probs(3, current), current)
    assert rule.suggest(3, 9, current) == 8


# long: one stored file followed through every way it can go stale
def test_checkpoint_logits_are_computed_once_and_recomputed_when_stale(artifacts_home,
                                                                        monkeypatch) -> None:
    """The suspect signals' checkpoint logits are kept on disk beside the checkpoint: a new
    process reads them (no forward pass), gets the same scores, and recomputes them when the
    checkpoint changed, when the stored file is corrupt, or when it sees other images; a folder
    that cannot be written still answers. Each pass is reported by name."""
    import influence_core.audit.logits_cache as cache
    import influence_core.audit.suspects as suspects
    from influence_core import load_problem, recipe
    from influence_core.data.datasets import subset

    problem = load_problem(recipe("digits", "mlp", noise=0.1, epochs=4))
    seen: list[str] = []
    first = suspects.suspect_scores(problem, "checkpoint_loss+dynamics_loss",
                                    progress=lambda d, t, w: seen.append(w))
    assert {"predictions of the trajectory checkpoints",
            "predictions of the training-dynamics checkpoints"} <= set(seen)
    stored = sorted((artifacts_home / "models").glob("*/snapshots/*.logits-*.pt"))
    assert len(stored) == 9  # 5 geometric + 8 even checkpoints, 4 of them shared
    passes = []
    real = cache.predict_logits

    def counted(model, data, *a, **k):
        passes.append(len(data))
        return real(model, data, *a, **k)

    monkeypatch.setattr(cache, "predict_logits", counted)
    cache._LOGITS.clear()
    suspects._DYNAMICS.clear()
    again = suspects.suspect_scores(problem, "checkpoint_loss+dynamics_loss")
    assert passes == [] and torch.equal(first, again)

    data, _, _ = suspects.training_set(problem)
    model = suspects.trajectory(problem, 5)[0]
    checkpoint = Path(model.checkpoint_file)
    path = checkpoint.with_name(f"{checkpoint.stem}.logits-{len(data)}.pt")
    assert path in stored
    want = real(model, data)
    path.write_bytes(b"not a tensor file")  # corrupt: recomputed and rewritten
    cache._LOGITS.clear()
    assert torch.equal(cache.snapshot_logits(model, data), want) and passes == [len(data)]
    cache._LOGITS.clear()
    assert torch.equal(cache.snapshot_logits(model, data), want) and len(passes) == 1
    other = subset(data, torch.arange(len(data) - 1, -1, -1))  # same size, other images
    cache._LOGITS.clear()
    assert torch.equal(cache.snapshot_logits(model, other), want.flip(0)) and len(passes) == 2
    checkpoint.write_bytes(checkpoint.read_bytes())
    os.utime(checkpoint, ns=(1, 1))
    cache._LOGITS.clear()
    cache.snapshot_logits(model, data)
    assert len(passes) == 3
    monkeypatch.setattr(cache, "save_atomic", _refuse_write)  # a read-only folder
    cache._LOGITS.clear()
    path.unlink()
    assert torch.equal(cache.snapshot_logits(model, data), want) and not path.exists()


def _refuse_write(state, path) -> None:
    raise OSError(30, "Read-only file system", str(path))


def test_the_fit_gate_ranks_by_loss_unless_the_model_memorises(artifacts_home) -> None:
    """memorisation_gap is the accuracy on the given training labels minus the test accuracy,
    the same number evaluation.mislabel.run_gap reads off a run; the default ranking is then
    the training loss at most FIT_GAP (regular training of noisy digits: the model does not
    fit its flips) and the memorising signal above it (40 epochs without weight decay)."""
    from influence_core import load_problem
    from influence_core.audit.signals import FIT_GAP, FIT_GATE, MEMORISING_SIGNAL
    from influence_core.audit.suspects import (
        memorisation_gap,
        resolve_signal,
        suspect_scores,
        training_set,
    )
    from influence_core.data.training import predict_logits
    from influence_core.evaluation.mislabel import mislabel_config, run_gap

    for regime, expected in (("regular", "loss"), ("memorising", MEMORISING_SIGNAL)):
        problem = load_problem(mislabel_config("digits", "mlp", 0.1, regime))
        data, flipped, _ = training_set(problem)
        fitted = predict_logits(problem.model, data).argmax(1) == data.labels
        test = predict_logits(problem.model, problem.test).argmax(1) == problem.test.labels
        run = {"n_train": len(data), "n_flipped": int(flipped.sum()),
               "flips_fitted": float(fitted[flipped].double().mean()),
               "clean_fitted": float(fitted[~flipped].double().mean()),
               "test_accuracy": float(test.double().mean())}
        gap = memorisation_gap(problem)
        assert gap == pytest.approx(run_gap(run), abs=1e-6)
        assert (gap <= FIT_GAP) == (regime == "regular"), (regime, gap)
        assert resolve_signal(problem, FIT_GATE) == expected
        assert resolve_signal(problem, "cv_loss") == "cv_loss"  # only the gate is resolved
        if regime == "regular":  # the gate's scores are the training loss's
            assert torch.equal(suspect_scores(problem, FIT_GATE), suspect_scores(problem, "loss"))


def test_the_gap_is_chosen_on_runs_and_the_code_uses_the_dev_splits_choice() -> None:
    """choose_gap picks the midpoint whose gate finds the most flips (loss below it, the
    memorising signal above); the shipped constant is the development split's choice."""
    import json
    from pathlib import Path

    from influence_core.audit.signals import FIT_GAP, MEMORISING_SIGNAL
    from influence_core.evaluation.mislabel import with_fit_gate
    from influence_core.evaluation.suspect_selection import choose_gap

    def run(gap: float, loss: float, mem: float) -> dict:
        return {"n_train": 100, "n_flipped": 0, "clean_fitted": 0.9 + gap, "flips_fitted": 0.0,
                "test_accuracy": 0.9, "rankings": {"loss": {"curve": {"0.10": loss}},
                                                   MEMORISING_SIGNAL: {"curve": {"0.10": mem}}}}

    runs = {"a_regular_s0": run(-0.05, 0.9, 0.8), "b_regular_s0": run(0.01, 0.7, 0.6),
            "c_memorising_s0": run(0.08, 0.3, 0.9)}
    assert choose_gap(runs)["chosen_gap"] is None  # runs the gate was not applied to
    got = choose_gap({k: with_fit_gate(r) for k, r in runs.items()})
    assert runs["c_memorising_s0"]["fit_gate"]["signal"] == MEMORISING_SIGNAL
    assert got["chosen_gap"] == pytest.approx(0.045)  # between 0.01 and 0.08
    assert max(s for _, s in got["by_gap"]) == pytest.approx((0.9 + 0.7 + 0.9) / 3)
    dev = json.loads((Path(__file__).parents[1] / "docs/reports/suspects_dev.json").read_text())
    assert abs(dev["fit_gate"]["chosen_gap"] - FIT_GAP) < 5e-4
    assert dev["chosen_default"] == "fit_gate" and dev["default"] == "fit_gate"
