"""Label noise kinds (data/noise.py): exact flip counts, each rule's target labels, seeding, the
weak model's class pairs, the cache, and the configs that use them."""

from __future__ import annotations

import pytest
import torch

from influence_core.config import TrainConfig, config_hash
from influence_core.data.datasets import ImageDataset
from influence_core.data.noise import (
    NOISE_KINDS,
    class_pairs,
    inject_noise,
    weak_model_probs,
)
from influence_core.data.registry import load_dataset


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_dataset("digits")[0]


@pytest.mark.parametrize("kind", NOISE_KINDS)
@pytest.mark.parametrize("fraction", [0.1, 0.2])
def test_every_kind_flips_exactly_the_fraction_to_other_classes(
        kind: str, fraction: float, digits: ImageDataset, artifacts_home) -> None:
    noisy, mask = inject_noise(digits, kind, fraction, seed=3)
    assert int(mask.sum()) == round(fraction * len(digits))
    assert torch.equal(mask, noisy != digits.labels)  # every flip changes the label
    assert ((noisy >= 0) & (noisy < digits.num_classes)).all()
    again, _ = inject_noise(digits, kind, fraction, seed=3)
    assert torch.equal(noisy, again)
    other, _ = inject_noise(digits, kind, fraction, seed=4)
    assert not torch.equal(noisy, other)


def test_pair_noise_swaps_within_the_weak_models_most_confused_pairs(
        digits: ImageDataset, artifacts_home) -> None:
    probs = weak_model_probs(digits)
    pairs = class_pairs(probs, digits.labels)
    assert len(pairs) == digits.num_classes // 2
    flat = [c for p in pairs for c in p]
    assert len(set(flat)) == len(flat)  # each class in at most one pair
    # the first pair is the most confused one of all
    conf = torch.stack([probs[digits.labels == c].mean(0) for c in range(10)])
    sym = conf + conf.T
    sym.fill_diagonal_(-1)
    i, j = divmod(int(sym.argmax()), 10)
    assert pairs[0] == (min(i, j), max(i, j))
    noisy, mask = inject_noise(digits, "pair", 0.2, seed=0)
    partner = {a: b for p in pairs for a, b in (p, p[::-1])}
    for clean, given in zip(digits.labels[mask].tolist(), noisy[mask].tolist()):
        assert partner[clean] == given


def test_instance_noise_gives_the_weak_models_choice_and_prefers_ambiguous_images(
        digits: ImageDataset, artifacts_home) -> None:
    probs = weak_model_probs(digits)
    noisy, mask = inject_noise(digits, "instance", 0.1, seed=0)
    others = probs.clone()
    others[torch.arange(len(digits)), digits.labels] = -1
    assert torch.equal(noisy[mask], others[mask].argmax(1))
    p_true = probs[torch.arange(len(digits)), digits.labels]
    assert p_true[mask].mean() < p_true[~mask].mean()  # ambiguous images are flipped more


def test_cached_flips_are_reused_and_a_bad_cache_file_is_recomputed(
        digits: ImageDataset, artifacts_home) -> None:
    noisy, _ = inject_noise(digits, "instance", 0.1, seed=1)
    [path] = list((artifacts_home / "noise").glob("instance-*.pt"))
    torch.save(torch.zeros(3), path)  # not what the code writes: recomputed, not trusted
    again, _ = inject_noise(digits, "instance", 0.1, seed=1)
    assert torch.equal(noisy, again)


def test_unknown_kind_and_bad_fraction_are_refused(digits: ImageDataset) -> None:
    with pytest.raises(ValueError, match="unknown noise kind"):
        inject_noise(digits, "typo", 0.1)
    with pytest.raises(ValueError, match="noise_kind"):
        TrainConfig(noise=0.1, noise_kind="typo")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        inject_noise(digits, "pair", 1.0)


def test_uniform_configs_keep_their_hashes() -> None:
    """noise_kind is hashed only when it is not uniform: cached checkpoints stay valid."""
    from influence_core.config import recipe

    # hashes of configs written before noise_kind existed
    assert config_hash(TrainConfig(noise=0.1, noise_kind="uniform")) == "791f1dc69fe2"
    assert config_hash(recipe("mnist", "cnn", noise=0.2, noise_seed=3)) == "ce73b0ae385e"
    assert config_hash(TrainConfig(noise=0.1)) != config_hash(
        TrainConfig(noise=0.1, noise_kind="pair"))
