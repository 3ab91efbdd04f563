"""The Newton step's damping, chosen per problem and per edit kind by a measured rule.

Rule (`calibrate`, run by `python -m influence_core calibrate`; the result is kept beside the
model's decision log and read by every session opened on that model afterwards):

  For each edit kind, two held-out edit sets of the problem's own training set:
    remove   the 2% of training points with the highest training loss, and a random 2%
    relabel  the 2% with the highest training loss, and the next 2%, each relabelled to the
             model's most probable class other than its given label (what Relabel suggests)
  For each set the recipe is retrained on the edited training set (same seed, init and batch
  order as the model: real retraining), and for every lambda = c x damping_unit on GRID
  (damping_unit: the recipe's weight decay, 1e-3 without one) the Newton step's model is
  compared with the retrained one: ratio = KL(retrained || unchanged model) / KL(retrained ||
  stepped model) on the test split (> 1: the step moved the model toward retraining).
  Each kind takes the c with the largest geometric-mean ratio over its two sets. A kind whose
  best ratio is not above 1 gets no step: no damping made the step better than doing nothing,
  so the session records those decisions (the queue and labels follow them) but leaves the
  model where it is, and says so.

A cleaning round's model keeps its own calibration in its round folder (the app's "Calibrate
the Newton step" runs the rule on the model under review, the round's left-out examples left out
of its edit sets and retrainings); a round without one uses the base model's, and says so.
Without a calibration (or with an explicit damping) every kind uses newton_damping's default.
The sets are chosen by loss, not by any review, so a calibration says nothing about a later
decision log; it costs four trainings of the recipe.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..artifacts import write_json
from ..curvature.base import Curvature
from ..curvature.gradients import TrackedModel
from ..curvature.task import ClassificationTask
from ..data.models import build_model
from ..data.training import predict_logits, train_model
from ..progress import Progress, silent
from .unlearning import damping_unit, newton_damping, newton_step, updated_model

KINDS = ("remove", "relabel")
GRID = (1.0, 10.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)  # multiples of damping_unit
SET_FRACTION = 0.02
VERSION = 1


@dataclass(frozen=True)
class DampingRule:
    """Per edit kind: the absolute lambda, or None when the step is skipped for that kind;
    `why`: one line per kind saying where the choice comes from."""

    damping: dict[str, float | None]
    why: dict[str, str] = field(default_factory=dict)
    calibrated: bool = False
    from_base: bool = False  # a cleaning round's step under the base model's calibration

    def describe(self) -> str:
        return "; ".join(f"{k}: {self.why[k]}" for k in KINDS if k in self.why)


def calibration_path(log_path: str | Path, method: str) -> Path:
    """Where a model's calibration is kept: beside its decision log, one file per estimator."""
    log_path = Path(log_path)
    return log_path.parent.parent / "calibration" / f"{log_path.stem}-{method}.json"


def model_calibration_path(problem: object, log_path: str | Path, method: str) -> Path:
    """Where the calibration of `problem`'s model is kept: a cleaning round's in its folder, the
    base model's beside its decision log (calibration_path)."""
    meta = getattr(problem, "meta", None) or {}
    if meta.get("round"):
        return Path(meta["checkpoint"]).parent / f"calibration-{method}.json"
    return calibration_path(log_path, method)


def model_rule(problem: object, log_path: str | Path, method: str) -> DampingRule | None:
    """The calibrated rule of `problem`'s model; for a cleaning round without its own, the base
    model's, marked as such. None when there is neither."""
    config = getattr(problem, "config", None)
    own = model_calibration_path(problem, log_path, method)
    if (rule := load_rule(own, config)) is not None:
        return rule
    base = calibration_path(log_path, method)
    if own == base or (rule := load_rule(base, config)) is None:
        return None
    why = {k: f"{v} (measured on the base model, not on this round's)" for k, v in
           rule.why.items()}
    return DampingRule(rule.damping, why, calibrated=True, from_base=True)


def default_rule(config: object, damping: float | None = None) -> DampingRule:
    lam = newton_damping(config, damping)
    source = "given" if damping is not None else "default: 1000 x weight decay, not calibrated"
    why = f"lambda = {lam:.3g} ({source})"
    return DampingRule(dict.fromkeys(KINDS, lam), dict.fromkeys(KINDS, why))


def load_rule(path: Path, config: object) -> DampingRule | None:
    """The rule a calibration file gives, or None when there is none (or an unreadable one)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("version") != VERSION:
        return None
    damping, why = {}, {}
    for kind in KINDS:
        k = data["kinds"][kind]
        if k["used"]:
            damping[kind] = k["damping"]
            why[kind] = (f"lambda = {k['damping']:.3g} ({k['multiple']:g} x "
                         f"{damping_unit(config):g}), calibrated: the step gets "
                         f"{k['ratio']:.2f}x closer to retraining than doing nothing")
        else:
            damping[kind] = None
            why[kind] = (f"Newton step skipped: on held-out {kind} sets no damping brought "
                         f"the model closer to retraining than doing nothing (best ratio "
                         f"{k['ratio']:.2f} at {k['multiple']:g} x the weight decay)")
    return DampingRule(damping, why, calibrated=True)


def _edit_sets(model: nn.Module, train: object, excluded: torch.Tensor
               ) -> dict[str, list[tuple[list, dict]]]:
    """Per kind, its two edit sets among the examples not `excluded` (N,) bool."""
    logits = predict_logits(model, train)
    labels = train.labels
    loss = nn.functional.cross_entropy(logits, labels, reduction="none")
    loss[excluded] = -math.inf  # never chosen while another example is left
    order = torch.argsort(loss, descending=True, stable=True)
    k = max(1, round(SET_FRACTION * int((~excluded).sum())))
    other = logits.clone()
    other[torch.arange(len(labels)), labels] = -math.inf
    suggested = other.argmax(1)
    gen = torch.Generator().manual_seed(0)
    kept = torch.nonzero(~excluded)[:, 0]
    rand = kept[torch.randperm(len(kept), generator=gen)[:k]]

    def relabel(idx: torch.Tensor) -> tuple[list, dict]:
        return [], {int(i): int(suggested[i]) for i in idx}

    return {"remove": [(sorted(order[:k].tolist()), {}), (sorted(rand.tolist()), {})],
            "relabel": [relabel(order[:k]), relabel(order[k:2 * k])]}


def _kl(ref: torch.Tensor, logits: torch.Tensor) -> float:
    ref, logp = ref.double().log_softmax(1), logits.double().log_softmax(1)
    return float((ref.exp() * (ref - logp)).sum(1).mean())


def _log_ratio(nothing: float, step: float) -> float:
    """log(KL(nothing) / KL(step)); a step that lands on the retrained model counts as 1e6x."""
    if not math.isfinite(step) or nothing <= 0.0:
        return -math.inf if not math.isfinite(step) or step > 0.0 else 0.0
    return math.log(nothing / max(step, nothing * 1e-6))


def _retrained(problem: object, remove: list, relabel: dict, excluded: torch.Tensor,
               progress: Progress) -> torch.Tensor:
    cfg = problem.config
    labels = problem.train.labels.clone()
    for i, y in relabel.items():
        labels[i] = y
    keep = ~excluded
    keep[torch.tensor(remove, dtype=torch.long)] = False
    torch.manual_seed(cfg.seed)  # the model's own initialisation and batch order
    model = build_model(cfg.model, problem.train.shape, problem.train.num_classes)
    train_model(model, problem.train.with_labels(labels), cfg, torch.nonzero(keep)[:, 0],
                progress)
    return predict_logits(model.eval(), problem.test)


# long: two sets per kind, one retraining each, then every damping on the grid against them
def calibrate(problem: object, curvature: Curvature, path: Path,
              progress: Progress = silent, excluded: Iterable[int] = ()) -> DampingRule:
    """Run the module's rule on `problem` with `curvature` (a fit with a `rebased` method, e.g.
    EK-FAC or K-FAC) and write the result to `path` (model_calibration_path). Returns the rule.
    `excluded`: examples the model never trained on (a cleaning round's removed ones): left out
    of the edit sets and of every retraining."""
    if not hasattr(curvature, "rebased"):
        raise ValueError(f"calibration needs a curvature that can change its damping without "
                         f"refitting (ekfac or kfac), not {curvature.name}")
    task, unit = ClassificationTask(), damping_unit(problem.config)
    wd = problem.config.weight_decay
    out = torch.zeros(len(problem.train), dtype=torch.bool)
    out[torch.as_tensor(sorted(excluded), dtype=torch.long)] = True
    base = predict_logits(problem.model, problem.test)
    sets = _edit_sets(problem.model, problem.train, out)
    refs = {kind: [_retrained(problem, r, rl, out, progress) for r, rl in s]
            for kind, s in sets.items()}
    result = {"version": VERSION, "grid": list(GRID), "unit": unit,
              "set_fraction": SET_FRACTION, "kinds": {}}
    steps = len(KINDS) * len(GRID)
    for k, kind in enumerate(KINDS):
        ratios = {}
        for j, c in enumerate(GRID):
            progress(k * len(GRID) + j, steps, "Newton steps on the damping grid")
            curv = curvature.rebased(TrackedModel(problem.model), c * unit)
            logs = []
            for (remove, relabel), ref in zip(sets[kind], refs[kind]):
                delta = newton_step(curv, task, problem.train, remove, relabel, weight_decay=wd)
                stepped = predict_logits(updated_model(curv, delta), problem.test)
                logs.append(_log_ratio(_kl(ref, base), _kl(ref, stepped)))
            ratios[c] = math.exp(sum(logs) / len(logs))
        best = max(GRID, key=lambda c: ratios[c])
        result["kinds"][kind] = {
            "multiple": best, "damping": best * unit, "ratio": ratios[best],
            "used": ratios[best] > 1.0, "ratios": {str(c): r for c, r in ratios.items()},
            "sets": [len(r) + len(rl) for r, rl in sets[kind]],
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    return load_rule(path, problem.config)


def kind_curvatures(curvature: Curvature, rule: DampingRule) -> dict[str, Curvature | None]:
    """Per edit kind, `curvature` under that kind's damping (None: the kind's step is skipped)."""
    return {kind: None if lam is None else curvature.rebased(
        TrackedModel(curvature.tracked.model, list(curvature.tracked.modules)), lam)
        for kind, lam in rule.damping.items()}


def kinds_step(base: Curvature, kinds: dict[str, Curvature | None] | None, task: object,
               train: object, remove: list[int], relabel: dict[int, int],
               weight_decay: float) -> torch.Tensor:
    """The Newton step as the sum of one step per edit kind, each under its own damping (the
    step is linear in the edits, so with one damping this is unlearning.newton_step); a kind
    without a curvature contributes nothing. kinds None: `base` for every edit. The relabel
    part is rescaled from newton_step's 1/N to the 1/(N - m) of the m removals it comes with."""
    if kinds is None:
        return newton_step(base, task, train, remove, relabel, weight_decay=weight_decay)
    delta = torch.zeros_like(base.tracked.flat_params(), dtype=torch.float64)
    if kinds.get("remove") is not None and remove:
        delta += newton_step(kinds["remove"], task, train, remove, {}, weight_decay=weight_decay)
    if kinds.get("relabel") is not None and relabel:
        delta += newton_step(kinds["relabel"], task, train, [], relabel,
                             weight_decay=weight_decay) * (len(train) / (len(train) - len(remove)))
    return delta


def applied(kinds: dict[str, Curvature | None] | None, remove: list[int],
            relabel: dict[int, int]) -> tuple[list[int], dict[int, int]]:
    """The edits the model follows: those of kinds whose step is not skipped."""
    if kinds is None:
        return remove, relabel
    return (remove if kinds.get("remove") is not None else [],
            relabel if kinds.get("relabel") is not None else {})
