"""The last retrain with the next suspects left out: it is the round's own retrain with more
examples left out, those are the top of the round's unreviewed queue, and nothing is trained
twice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from influence_core import DecisionLog
from influence_core.audit.rounds import retrain_round, round_queue
from influence_core.evaluation import round_pruning
from influence_core.evaluation.round_pruning import (
    pruned_retrain_accuracy,
    pruned_retrains,
    pruning_figures,
)


@pytest.fixture(scope="module")
def problem(pair_noise_digits):
    return pair_noise_digits


@pytest.fixture
def reviewed(problem, tmp_path: Path):
    """A log with three relabels to the true label, two keeps and one removal; its round 2."""
    log = DecisionLog(tmp_path / "log.db", problem.train.labels, problem.train.num_classes)
    true = problem.train.original_labels
    flips = torch.nonzero(problem.flip_mask)[:, 0].tolist()
    clean = torch.nonzero(~problem.flip_mask)[:, 0].tolist()
    for i in flips[:3]:
        log.record(i, "relabel", int(true[i]), "test")
    for i in clean[:2]:
        log.record(i, "keep", None, "test")
    log.record(clean[2], "remove", None, "test")
    rnd = retrain_round(problem, log, tmp_path / "rounds", build_index=False)
    yield log, rnd, flips[:3] + clean[:3]
    log.close()


def test_leaving_nothing_more_out_is_the_rounds_own_retrain(problem, reviewed) -> None:
    _, rnd, _ = reviewed
    assert pruned_retrain_accuracy(problem, rnd.labels, rnd.removed) == pytest.approx(
        rnd.meta["test_accuracy"], abs=0)


def test_the_left_out_are_the_top_of_the_unreviewed_queue(problem, reviewed, tmp_path,
                                                          monkeypatch) -> None:
    log, rnd, done = reviewed
    seen = []

    def fake(problem, labels, left_out, progress=None):
        seen.append(left_out.clone())
        return 0.5 + 0.1 * len(seen)

    monkeypatch.setattr(round_pruning, "pruned_retrain_accuracy", fake)
    true = problem.train.original_labels
    out = pruned_retrains(problem, rnd, log, true, tmp_path, fractions=(0.02, 0.05))
    n = len(true)
    scores = torch.from_numpy(np.load(rnd.folder / "scores.npy"))
    excluded = rnd.removed.clone()
    excluded[done] = True
    for (key, row), left_out, fraction in zip(out.items(), seen, (0.02, 0.05)):
        k = round(fraction * n)
        top = round_queue(scores, excluded, k)
        assert key == f"{fraction:g}" and row["left_out"] == k == len(top)
        assert torch.equal(left_out, rnd.removed | torch.isin(torch.arange(n), top))
        assert not left_out[done[:5]].any()  # reviewed examples are trained on
        assert row["flips_left_out"] == int((rnd.labels[top] != true[top]).sum())
        assert row["flips_left_out"] > 0  # the queue puts flips first
    # cached: asked again (with one more fraction), only the new one is trained
    again = pruned_retrains(problem, rnd, log, true, tmp_path, fractions=(0.02, 0.05, 0.1))
    assert len(seen) == 3
    assert again["0.02"] == out["0.02"] and again["0.1"]["accuracy"] == pytest.approx(0.8)


def test_pruning_figures_average_over_the_seeds_that_measured_it() -> None:
    def seed(number, plain, pruned):
        row = {"gap_closed_retrained": plain}
        if pruned is not None:
            row["pruned_retrains"] = {"0.02": {"left_out": 10, "flips_left_out": pruned[0],
                                               "accuracy": 0.9, "gap_closed": pruned[1]}}
        return {"seed": number, "queues": {"app": [{}, row]}}

    figures = pruning_figures([seed(2, 0.5, (4, 0.7)), seed(3, 0.6, (6, 0.9))])
    assert figures["seeds"] == [2, 3]
    assert figures["plain"] == pytest.approx(0.55)
    assert figures["0.02"] == pytest.approx(0.8)
    assert figures["0.02_flips_left_out"] == pytest.approx(0.5)
    # a seed kept from a report run before the measurement counts in neither mean
    figures = pruning_figures([seed(2, 0.5, None), seed(3, 0.6, (6, 0.9))])
    assert figures["seeds"] == [3] and figures["plain"] == pytest.approx(0.6)
    assert figures["0.02"] == pytest.approx(0.9)
    assert pruning_figures([seed(2, 0.5, None)]) is None


def test_the_verdict_names_where_leaving_out_helped_and_whether_any_fraction_always_did() -> None:
    from influence_core.evaluation.benchmarks_rounds import _pruning_verdict

    def p(plain, a, b, share):
        return {"plain": plain, "0.02": a, "0.05": b, "0.02_flips_left_out": share}

    mixed = {"x 0.1 instance": p(0.6, 0.7, 0.8, 0.5), "x 0.1 pair": p(0.9, 0.5, 0.1, 0.2)}
    text = _pruning_verdict(mixed, ["0.02", "0.05"])
    assert ("every fraction in x 0.1 instance, and lowered it at every fraction in x 0.1 "
            "pair") in text
    assert "No fraction raised it in every setting" in text and "more often flipped" in text
    flipped = {**mixed, "x 0.1 pair": p(0.9, 0.5, 0.1, 0.6)}  # shares do not separate them
    assert "more often flipped" not in _pruning_verdict(flipped, ["0.02", "0.05"])
    always = {"x 0.1 instance": p(0.6, 0.7, 0.5, 0.5), "x 0.1 pair": p(0.5, 0.6, 0.4, 0.4)}
    text = _pruning_verdict(always, ["0.02", "0.05"])
    assert "f = 0.02 raised it in every development setting" in text
    assert "No fraction" not in text  # 0.05 helped nowhere, but 0.02 everywhere
    assert "raised the gap closed at every fraction in no setting" in text
