"""Suspect signal expressions: how base signals combine ('a+b' = rank mean, 'classnorm:a'
= z-scored within each given class), which base signals an expression reads, and what it costs
beyond the model's own training (audit.suspects computes the base signals)."""

from __future__ import annotations

import numpy as np
import torch

#: Folds of the cross-validated signals (each trains K models on (K-1)/K of the data).
CV_FOLDS = {"cv_loss": 5, "self_confidence": 5, "cv_self_influence": 5, "cv2_loss": 2}

#: The fit gate: one signal or another by how much the model memorises its training labels,
#: gap = accuracy on the given training labels - test accuracy (audit.suspects.
#: memorisation_gap). At most FIT_GAP, the model has not fitted its label errors: its own
#: training loss is then already an out-of-sample signal, and costs nothing. Above it, the
#: model has memorised them (their loss is near zero), and the queue needs out-of-sample and
#: training-dynamics signals. FIT_GAP is the development split's choice
#: (evaluation.suspect_selection.choose_gap: of the midpoints between its runs' gaps, the one
#: whose gate finds the most flips there); no test-split run was used for it.
FIT_GATE = "fit_gate"
FITTING_SIGNAL = "loss"
MEMORISING_SIGNAL = "cv2_loss+checkpoint_loss+dynamics_loss"
FIT_GAP = 0.027


def gate_choice(gap: float) -> str:
    """The signal the fit gate picks for a model whose memorisation gap is `gap` (NaN, e.g.
    without test images: the memorising one, which does not rely on the model's own fit)."""
    return FITTING_SIGNAL if gap <= FIT_GAP else MEMORISING_SIGNAL


def extra_trainings(expression: str) -> float:
    """What a signal expression costs beyond the model's own training, in trainings of the
    whole training set: K-1 per distinct fold count K of its cross-validated signals (folds are
    shared; the fit gate: its costlier branch). The trajectory and dynamics signals read
    checkpoints the model's own training kept (free for a model the app trained; one training
    for a user's checkpoint)."""
    if expression == FIT_GATE:
        return max(extra_trainings(FITTING_SIGNAL), extra_trainings(MEMORISING_SIGNAL))
    folds = {CV_FOLDS[n] for n in base_names(expression) if n in CV_FOLDS}
    return float(sum(k - 1 for k in folds))


def probability_sources(expression: str) -> set[str]:
    """The probabilities (audit.suggest.PROBABILITY_SOURCES) a session ranked by `expression`
    has at hand without another training: the model's, its own run's checkpoints', and the
    out-of-sample ones of the cross-validations the ranking trained (the fit gate: those both
    its branches have)."""
    if expression == FIT_GATE:
        return probability_sources(FITTING_SIGNAL) & probability_sources(MEMORISING_SIGNAL)
    folds = {CV_FOLDS[n] for n in base_names(expression) if n in CV_FOLDS}
    return ({"model", "dynamics", "checkpoints"} | ({"cleanlab"} if 5 in folds else set())
            | ({"cv2"} if 2 in folds else set()))


def class_normalised(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Scores z-scored within each given class: (s - mean_c) / std_c, c = the example's label."""
    out = torch.zeros_like(scores, dtype=torch.float64)
    for c in labels.unique():
        sel = labels == c
        s = scores[sel].double()
        out[sel] = (s - s.mean()) / s.std().clamp_min(1e-12)
    return out


def rank_mean(*signals: torch.Tensor) -> torch.Tensor:
    """Mean of the signals' normalised ranks in [0, 1] (higher = more suspect)."""
    from scipy.stats import rankdata

    ranks = [rankdata(np.asarray(s, float)) / len(s) for s in signals]
    return torch.from_numpy(np.mean(ranks, axis=0))


def combine(name: str, base: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """A signal expression: 'a+b' = rank_mean(a, b); a 'classnorm:' prefix z-scores a base signal
    within each given class, e.g. 'cv_loss+classnorm:checkpoint_self_influence'."""
    parts = []
    for term in name.split("+"):
        if term.startswith("classnorm:"):
            parts.append(class_normalised(base[term.split(":", 1)[1]], labels))
        else:
            parts.append(base[term])
    return parts[0] if len(parts) == 1 else rank_mean(*parts)


def base_names(expression: str) -> list[str]:
    return sorted({t.split(":", 1)[-1] for t in expression.split("+")})
