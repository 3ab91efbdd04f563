"""Training is deterministic, cached by config, and reaches the accuracy goals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from influence_core import accuracy, load_dataset, load_problem, recipe, train_or_load

DIGITS_MLP_GOAL = 0.95
MNIST_CNN_GOAL = 0.98
FASHION_CNN_GOAL = 0.88
SHORT = {"epochs": 2}  # enough to change every weight, fast enough to run twice


def _calls() -> tuple[list, callable]:
    calls: list[tuple[int, int, str]] = []
    return calls, lambda done, total, what: calls.append((done, total, what))


def test_same_seed_gives_bit_identical_weights_and_reuses_the_checkpoint(
    artifacts_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = recipe("digits", "mlp", **SHORT)
    train, test = load_dataset("digits")
    first, meta = train_or_load(cfg, train, test)
    (checkpoint,) = artifacts_home.rglob("model.pt")
    mtime = checkpoint.stat().st_mtime_ns

    monkeypatch.setenv("INFLUENCE_AUDIT_HOME", str(artifacts_home.parent / "elsewhere"))
    second, _ = train_or_load(cfg, train, test)  # no cache there: trains again
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs between two trainings with seed {cfg.seed}"

    monkeypatch.setenv("INFLUENCE_AUDIT_HOME", str(artifacts_home))
    calls, progress = _calls()
    cached, cached_meta = train_or_load(cfg, train, test, progress)
    assert calls == [] and cached_meta == meta  # loaded, not retrained
    assert checkpoint.stat().st_mtime_ns == mtime
    assert all(torch.equal(a, b) for a, b in
               zip(first.state_dict().values(), cached.state_dict().values()))

    other, _ = train_or_load(recipe("digits", "mlp", seed=1, **SHORT), train, test)
    assert not torch.equal(first.state_dict()["1.weight"], other.state_dict()["1.weight"])
    assert len(list(artifacts_home.rglob("model.pt"))) == 2  # one checkpoint per config


def test_order_seed_changes_batch_order_only_and_keeps_old_hashes() -> None:
    from influence_core.config import TrainConfig, config_hash
    from influence_core.data.models import build_model
    from influence_core.data.training import train_model

    # hashes of configs written before order_seed existed: cached checkpoints stay valid
    assert config_hash(TrainConfig()) == "21f30811d119"
    assert config_hash(recipe("mnist", "cnn", subset_seed=3, subset_fraction=0.5)) == "0eb752ce942e"
    assert config_hash(TrainConfig(order_seed=1)) != config_hash(TrainConfig())

    train, _ = load_dataset("digits")
    runs = {}
    for order_seed in (-1, 0, 1):
        cfg = recipe("digits", "mlp", epochs=1, order_seed=order_seed)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, train.shape, train.num_classes)
        init = {k: v.clone() for k, v in model.state_dict().items()}
        runs[order_seed] = (init, train_model(model, train, cfg).state_dict())
    for name in runs[-1][0]:
        assert torch.equal(runs[-1][0][name], runs[1][0][name])  # one init for every order
        assert torch.equal(runs[-1][1][name], runs[0][1][name])  # -1 means the init's seed
    assert not torch.equal(runs[-1][1]["1.weight"], runs[1][1]["1.weight"])


def test_digits_mlp_default_recipe_reaches_goal(artifacts_home: Path) -> None:
    calls, progress = _calls()
    problem = load_problem(recipe("digits", "mlp"), progress=progress)
    assert problem.meta["test_accuracy"] >= DIGITS_MLP_GOAL
    assert accuracy(problem.model, problem.test) == pytest.approx(problem.meta["test_accuracy"])
    assert calls[-1][0] == calls[-1][1]  # progress reported up to the last step
    assert problem.checkpoint.is_file() and not problem.model.training


def test_noisy_problem_trains_on_the_flipped_labels(artifacts_home: Path) -> None:
    problem = load_problem(recipe("digits", "mlp", noise=0.1, epochs=1))
    clean, _ = load_dataset("digits")
    assert int(problem.flip_mask.sum()) == round(0.1 * len(clean))
    changed = problem.train.labels != clean.labels
    assert torch.equal(changed, problem.flip_mask)
    assert torch.equal(problem.train.original_labels, clean.labels)
    assert problem.meta["config"]["noise"] == 0.1


@pytest.mark.slow
@pytest.mark.parametrize("dataset, goal", [
    ("mnist", MNIST_CNN_GOAL), ("fashion_mnist", FASHION_CNN_GOAL),
])
def test_cnn_recipe_reaches_goal(dataset: str, goal: float, data_root: Path,
                                 artifacts_home: Path) -> None:
    problem = load_problem(recipe(dataset, "cnn"), data_root)
    assert problem.meta["test_accuracy"] >= goal
