"""The core benchmark's pieces on digits: our EK-FAC self-influence agrees with Kronfluence's."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from influence_core import load_problem, recipe
from influence_core.data.datasets import subset
from influence_core.evaluation.bench_core import format_table, time_kronfluence, time_ours

AGREEMENT = 0.95  # Spearman of self-influence, ours vs Kronfluence (both sampled true Fisher)


@pytest.fixture(scope="module")
def digits_problem(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("INFLUENCE_AUDIT_HOME", str(tmp_path_factory.mktemp("home")))
    yield load_problem(recipe("digits", "mlp"))
    mp.undo()


def test_subset_keeps_examples_and_labels(digits_problem) -> None:
    train = digits_problem.train
    idx = torch.tensor([5, 1, 700])
    small = subset(train, idx)
    assert len(small) == 3
    assert torch.equal(small.labels, train.labels[idx])
    assert torch.equal(small.tensor(slice(None)), train.tensor(idx))


def test_self_influence_agrees_with_kronfluence(digits_problem) -> None:
    pytest.importorskip("kronfluence")
    small = subset(digits_problem.train, torch.arange(512))
    ours = time_ours(digits_problem.model, small, 128)
    theirs = time_kronfluence(digits_problem.model, small, 128)
    rho = spearmanr(ours["scores"].numpy(), theirs["scores"].numpy())[0]
    assert rho >= AGREEMENT, rho
    assert ours["fit_s"] > 0 and theirs["fit_s"] > 0


def test_table_lists_every_estimator() -> None:
    run = {"fit_s": 1.0, "self_s": 2.0, "total_s": 3.0, "epochs_worth": 3.0}
    ours = {**run, "matmul": "torch.bfloat16", "ratio_over_kronfluence": 0.043,
            "spearman_with_kronfluence": 0.9987}
    report = {
        "threads": 2, "batch_size": 128,
        "mnist_cnn": {"n": 60000, "whole_training_set": True, "epoch_s": 1.0, "ours": ours,
                      "ours_float32": {**ours, "matmul": "float32"}, "kronfluence": run},
        "digits_mlp_ihvp_error": {"num_params": 10, "probes": 2, "by_damping": {1.0: {
            "damping": 0.1, "ekfac": 0.1, "kfac": 0.2, "identity": 0.9,
            "lissa_by_depth": {10: 0.5}}}},
    }
    table = format_table(report)
    for word in ("Kronfluence", "ekfac", "kfac", "identity", "lissa 10", "0.100", "0.043",
                 "0.9987", "all 60000", "bfloat16", "float32"):
        assert word in table
