"""Out-of-sample signals of a round: each example is predicted by a model that never trained on
it, removed examples are neither trained on nor predicted, and the round queue uses them only
when its ranking asks for them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from influence_core import DecisionLog
from influence_core.audit import rounds
from influence_core.audit.round_signals import out_of_sample_loss, out_of_sample_probs
from influence_core.audit.signals import rank_mean


@pytest.fixture(scope="module")
def problem(pair_noise_digits):
    return pair_noise_digits


def test_each_example_is_predicted_by_a_model_that_never_saw_it(problem) -> None:
    labels = problem.train.labels.clone()
    n = len(labels)
    removed = torch.zeros(n, dtype=torch.bool)
    removed[:7] = True
    base = out_of_sample_probs(problem, labels, removed, 2)
    assert torch.equal(base[:7], torch.zeros_like(base[:7]))
    assert torch.allclose(base[7:].sum(1), torch.ones(n - 7, dtype=torch.float64))

    fold = torch.randperm(n, generator=torch.Generator().manual_seed(problem.config.seed)) % 2
    i = int(torch.nonzero((fold == 0) & ~removed)[0, 0])  # relabel i, remove another of its fold
    j = int(torch.nonzero((fold == 0) & ~removed)[1, 0])
    labels[i] = (labels[i] + 1) % problem.train.num_classes
    removed[j] = True
    edited = out_of_sample_probs(problem, labels, removed, 2)
    # i's fold model never trained on fold 0, so neither edit moves fold 0's predictions ...
    same = (fold == 0) & ~removed
    assert torch.allclose(edited[same], base[same], atol=1e-6)
    assert torch.equal(edited[j], torch.zeros_like(edited[j]))
    # ... while the model that predicts fold 1 trained on both edits
    other = (fold == 1) & ~removed
    assert (edited[other] - base[other]).abs().max() > 1e-4


def test_out_of_sample_loss_is_class_normalised_and_ranks_flips_first(problem) -> None:
    labels = problem.train.labels
    removed = torch.zeros(len(labels), dtype=torch.bool)
    removed[torch.nonzero(~problem.flip_mask)[:5, 0]] = True
    scores = out_of_sample_loss(problem, labels, removed)
    kept = ~removed
    for c in labels.unique():
        sel = kept & (labels == c)
        assert abs(float(scores[sel].mean())) < 1e-9
        assert abs(float(scores[sel].std()) - 1.0) < 1e-9
    assert float(scores[removed].max()) < float(scores[kept].min())
    flipped, clean = problem.flip_mask & kept, ~problem.flip_mask & kept
    assert float(scores[flipped].mean()) > float(scores[clean].mean()) + 1.0


def test_round_scores_compute_the_out_of_sample_loss_only_when_asked() -> None:
    own, parent, cv2 = torch.rand(50), torch.rand(50), torch.rand(50)
    calls = []

    def lazy_cv2() -> torch.Tensor:
        calls.append(1)
        return cv2

    assert torch.equal(rounds.round_scores("checkpoint_loss+parent", own, parent, lazy_cv2),
                       rank_mean(own, parent))
    assert not calls
    assert torch.equal(rounds.round_scores("cv2_loss+parent", own, parent, lazy_cv2),
                       rank_mean(cv2, parent))
    assert calls == [1]
    with pytest.raises(ValueError, match="needs a signal"):
        rounds.round_scores("cv2_loss", own, parent)


def test_a_round_ranked_by_the_out_of_sample_loss_keeps_it(problem, tmp_path: Path,
                                                          monkeypatch) -> None:
    monkeypatch.setattr(rounds, "QUEUE_RANKING", "cv2_loss+checkpoint_loss")
    log = DecisionLog(tmp_path / "log.db", problem.train.labels, problem.train.num_classes)
    flipped = torch.nonzero(problem.flip_mask)[:, 0].tolist()
    for i in flipped[:10]:
        log.record(i, "relabel", int(problem.train.original_labels[i]), "sim")
    log.record(flipped[10], "remove", None, "sim")
    try:
        two = rounds.retrain_round(problem, log, tmp_path / "rounds", build_index=False)
    finally:
        log.close()
    cv2 = torch.from_numpy(np.load(two.folder / "cv2_loss.npy"))
    own = torch.from_numpy(np.load(two.folder / "checkpoint_loss.npy"))
    assert torch.allclose(cv2, out_of_sample_loss(problem, two.labels, two.removed))
    assert torch.allclose(torch.from_numpy(np.load(two.folder / "scores.npy")),
                          rank_mean(cv2, own))
    assert two.meta["queue_ranking"] == "cv2_loss+checkpoint_loss"
    assert not set(two.queue.tolist()) & set(flipped[:11])
