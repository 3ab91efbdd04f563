"""Training-dynamics signals (audit/dynamics.py) and the suggested label (audit/suggest.py):
computed by hand on constructed values, and the suggestion checked against the clean labels of
flipped digits."""

from __future__ import annotations

import math

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
