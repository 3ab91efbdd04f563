"""The label a Review card suggests for a suspect (and Relabel's default), and the influence
evidence shown beside it.

A suggestion is never the given label: the most probable OTHER class under some probabilities
(`best_other`). The app uses APP_RULE (a `Suggester`; the fit gate picks one of two rules per
model), chosen on the development split among the rules the default ranking's session has at
hand (`evaluate suspects --split dev`, chosen_rule) and reported on the test split. Each rule
is measured by `evaluate mislabel` on the flipped examples of every noise kind (report key
"suggestion"; `evaluate suspects` averages them per split):
  model        the current model's probabilities
  dynamics     probabilities averaged over the training-dynamics checkpoints (audit.dynamics)
  checkpoints  probabilities averaged over the trajectory checkpoints (audit.suspects)
  cleanlab     out-of-sample probabilities (5-fold cross-validation), as cleanlab's argmax
  cv2          out-of-sample probabilities from 2-fold cross-validation
  a+b(+c)      the mean of those sources' probabilities
  evidence     the class whose top-k index scores on the example's loss under that class sum
               highest (the old rule: those scores grow with the loss gradient, so the classes
               the model finds least likely get the most support)
  evidence_normalised  the same with each class's scores divided by their standard deviation
               over the training set (classes compare on one scale)
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from ..attribution.index import AttributionIndex, query_vector
from ..data.datasets import ImageDataset, subset
from ..data.registry import Problem
from ..data.training import predict_logits
from .signals import CV_FOLDS, FIT_GAP, FIT_GATE, probability_sources
from .suspects import cross_validated_probs, memorisation_gap, run_checkpoints

PROBABILITY_SOURCES = ("model", "dynamics", "checkpoints", "cleanlab", "cv2")
#: The probability rules `evaluate mislabel` measures (the evidence rules come on top).
RULES = ["model", "dynamics", "checkpoints", "cleanlab", "cv2", "model+dynamics",
         "model+checkpoints", "checkpoints+dynamics", "model+checkpoints+dynamics",
         "model+cleanlab", "dynamics+cleanlab", "checkpoints+cleanlab", "model+cv2",
         "dynamics+cv2"]


#: The app's rule is gated like the default ranking (signals.FIT_GATE, FIT_GAP): a model that
#: has not memorised its training labels suggests from its own probabilities (FITTING_RULE);
#: one that has, from the mean of its own and those of the checkpoints its training kept
#: (MEMORISING_RULE: early checkpoints have not memorised a wrong label yet).
APP_RULE = FIT_GATE
FITTING_RULE = "model"
MEMORISING_RULE = "model+checkpoints+dynamics"


def gate_rule(gap: float) -> str:
    """The suggestion rule the fit gate picks for a model whose memorisation gap is `gap`."""
    return FITTING_RULE if gap <= FIT_GAP else MEMORISING_RULE


def sources_of(rule: str) -> list[str]:
    """The probability sources a rule averages ('model+dynamics' -> model, dynamics); empty for
    the evidence rules, which read the index instead."""
    parts = rule.split("+")
    return parts if all(p in PROBABILITY_SOURCES for p in parts) else []


def average_probs(rule: str, sources: dict[str, np.ndarray]) -> np.ndarray:
    """The rule's probabilities: the mean of its sources' (n, K) probabilities."""
    parts = sources_of(rule)
    if not parts:
        raise ValueError(f"{rule!r} is not an average of {PROBABILITY_SOURCES}")
    return np.mean([np.asarray(sources[p], dtype=np.float64) for p in parts], axis=0)


def best_other(probs: torch.Tensor | np.ndarray, given: torch.Tensor | np.ndarray) -> np.ndarray:
    """(n,) the most probable class other than each example's given label; probs (n, K)."""
    p = np.array(probs, dtype=np.float64, copy=True).reshape(len(given), -1)
    p[np.arange(len(p)), np.asarray(given, dtype=np.int64)] = -np.inf
    return p.argmax(1)


def class_scores(index: AttributionIndex, train: ImageDataset, i: int) -> torch.Tensor:
    """(K, N) index scores of every training example on example i's loss under each class c
    (K query vectors, one pass over the index); example i's own column is NaN."""
    x = train.tensor([i])[0]
    queries = torch.stack([query_vector(index, x, c) for c in range(train.num_classes)])
    scores = index.projection.scores(queries, index.vectors).double()
    scores[:, i] = float("nan")
    return scores


def class_support(scores: torch.Tensor, k: int = 8, normalise: bool = True) -> np.ndarray:
    """(K,) support for each class: the sum of its k largest positive scores, each class's
    scores divided by their standard deviation when `normalise`."""
    if normalise:
        scale = scores.nan_to_num(0.0).std(1, keepdim=True).clamp_min(1e-30)
        scores = scores / scale
    top = scores.nan_to_num(-float("inf")).topk(k, dim=1).values
    return top.clamp_min(0).sum(1).numpy()


class Suggester:
    """The Review card's suggestion for training example i under `rule`: the most probable class
    other than its label under the mean of the rule's sources that the session has at hand (a
    queue ranked by `signal` has the out-of-sample probabilities its cross-validations made; a
    user's checkpoint or a subset-trained model has no run of its own, so only the model's).
    The checkpoints' probabilities are computed per example and kept; checkpoints that are not
    kept (a model trained by an older version) are left out, never trained for a card."""

    def __init__(self, problem: Problem, signal: str, rule: str = APP_RULE) -> None:
        if rule == FIT_GATE:
            rule = gate_rule(memorisation_gap(problem))
        have = probability_sources(signal)
        if problem.meta.get("checkpoint") or problem.config.subset_seed >= 0:
            have = {h for h in have if h in ("model", "cleanlab", "cv2")}
            if problem.config.subset_seed >= 0:
                have = {"model"}
        self.problem, self.rule = problem, rule
        self.parts = [p for p in sources_of(rule) if p in have] or ["model"]
        self._lock = threading.Lock()
        self._models: dict[str, list[torch.nn.Module]] = {}
        self._oos: dict[str, torch.Tensor] = {}
        self._probs: dict[tuple[str, int], np.ndarray] = {}

    def describe(self) -> str:
        names = {"model": "the current model's", "checkpoints": "5 checkpoints of its training",
                 "dynamics": "8 more checkpoints of its training",
                 "cleanlab": "5-fold out-of-sample", "cv2": "2-fold out-of-sample"}
        if self.parts == ["model"]:
            return ("The most probable class other than the given label under the current "
                    "model's probabilities" + (" (it has not memorised its training labels: "
                    "its own probabilities are the best estimate)." if self.rule ==
                    FITTING_RULE else "."))
        return ("The most probable class other than the given label, averaging these "
                "probabilities: " + ", ".join(names[p] for p in self.parts) + ".")

    def _source(self, part: str, i: int) -> np.ndarray | None:
        key = (part, i)
        with self._lock:
            if key not in self._probs:
                if part in ("checkpoints", "dynamics"):
                    if part not in self._models:
                        self._models[part] = run_checkpoints(self.problem, part, train=False)
                    models = self._models[part]
                    if not models:
                        return None
                    one = subset(self.problem.train, torch.tensor([i]))
                    p = sum(predict_logits(m, one).softmax(1).double() for m in models)
                    self._probs[key] = (p / len(models))[0].numpy()
                else:
                    if part not in self._oos:
                        folds = 5 if part == "cleanlab" else CV_FOLDS["cv2_loss"]
                        self._oos[part] = cross_validated_probs(self.problem, folds)
                    self._probs[key] = self._oos[part][i].double().numpy()
            return self._probs[key]

    def probs(self, i: int, current: np.ndarray) -> np.ndarray:
        """(K,) the rule's probabilities for example i; `current`: the current model's."""
        got = [np.asarray(current, dtype=np.float64) if p == "model" else self._source(p, i)
               for p in self.parts]
        return np.mean([g for g in got if g is not None], axis=0)

    def suggest(self, i: int, given: int, current: np.ndarray) -> int:
        return int(best_other(self.probs(i, current)[None], np.array([given]))[0])
