"""An audit session: the current model is the base checkpoint plus the decision log.

current model = base theta + ONE batched Newton step over all active removals and relabels
(unlearning.newton_step), always computed from the base model with the curvature fitted there.
Because the step is a function of the SET of edits, undo and replay are exact recomputations:
the same log gives bitwise the same weights on the same machine, and undoing the last decision
gives back the previous weights (torch.equal). States are cached by their edits.

What is refreshed after each update, and how:
  exact:        test predictions (logits) of the updated model; losses of the remaining suspects
                under their current labels; self-influence gradients at the updated model.
  approximated: the curvature (factors fitted on the base model and the base labels are kept
                fixed), so self-influence uses the base model's (G + lambda I)^-1; the Newton
                step itself is first order around the base model.
  full_refresh: refits the curvature at the updated model on the edited training set (kept
                points, current labels) before scoring: seconds to minutes, not per click.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..attribution.scores import self_influence
from ..config import CURVATURE_CONFIGS
from ..curvature import Curvature, fit_curvature
from ..curvature.gradients import TrackedModel
from ..curvature.task import ClassificationTask, Task
from ..data.datasets import ImageDataset, subset
from ..data.training import save_atomic
from ..memo import FutureCache
from ..progress import Progress, silent
from . import damping as dmp
from .store import REMOVED, Decision, DecisionLog, Request, edits
from .unlearning import newton_damping, rebind, refine, updated_model

CACHE_SIZE = 8

APPROXIMATIONS = (
    "Newton step: one second-order step from the base model (first order in the edit)",
    "curvature fitted on the base model and base labels, kept fixed after edits",
)


@dataclass(frozen=True)
class AuditState:
    """The model and what depends on it, for one version of the decision log."""

    version: int  # id of the newest log row (0: the base model)
    model: nn.Module  # base + Newton step, eval mode
    delta: torch.Tensor  # (p,) theta - theta_base on the tracked layers
    labels: torch.Tensor  # (N,) current training labels (removed points keep theirs)
    removed: torch.Tensor  # (N,) bool: out of the model's training set (earlier rounds too)
    test: ImageDataset  # the test split (test_logits is computed on first use)
    suspects: torch.Tensor  # (k,) remaining suspects, most suspect first (prior, else self-infl.)
    suspect_scores: torch.Tensor  # (k,) their self-influence under the updated model
    suspect_losses: torch.Tensor  # (k,) their training loss under their current labels
    suspect_logits: torch.Tensor  # (k, K) the updated model's logits on them
    edits: tuple  # (removed indices, ((index, new label), ...)): what this state is a function of
    seconds: dict  # newton_step, self_influence (refit with full_refresh; predictions when used)
    approximations: tuple[str, ...]
    _lazy: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def test_logits(self) -> torch.Tensor:
        """(M, K) the updated model on the whole test split: computed once, on first use (a
        Review click needs none of it; Explore and full previews do)."""
        if "test_logits" not in self._lazy:
            start = time.perf_counter()
            self._lazy["test_logits"] = _logits(self.model, self.test)
            self.seconds["predictions"] = time.perf_counter() - start
        return self._lazy["test_logits"]

    def test_logits_of(self, indices: torch.Tensor) -> torch.Tensor:
        """(len(indices), K) logits of some test examples (cached per index set)."""
        if "test_logits" in self._lazy:
            return self._lazy["test_logits"][indices]
        key = ("subset", tuple(indices.tolist()))
        if key not in self._lazy:
            self._lazy[key] = _logits(self.model, subset(self.test, indices))
        return self._lazy[key]


class AuditSession:
    """Problem + fitted curvature + decision log -> the current model, cached per version.

    `suspects` are the training indices whose self-influence ranking is refreshed (default:
    all of them; pass the flagged candidates on large sets). `refine_steps` > 0 adds line-searched
    steps on the edited objective (unlearning.refine: one training pass each) to every update.
    `weight_decay` (default: the problem's training recipe) enters the removal step, see
    unlearning.newton_step. `prior` (N,), when given, orders the queue (a stronger suspect
    ranking such as suspects.suspect_scores); otherwise the refreshed self-influence does.
    `ranking` names that order (a suspects.RANKINGS key, "" when unnamed); every decision and
    undo made through the session records it. In a later cleaning round (audit.rounds) the
    problem's model was retrained on `problem.train.labels` without the `excluded` (N,) bool
    examples, while the log's labels stay the base ones: the Newton step applies only the edits
    that differ from what the round was trained on (see `edits`).

    States are cached by their edit set, thread-safely: `state_for` may run in a background
    thread (app_api.ReviewCache computes the likely next states while an annotator looks at a
    card), and a caller asking for a state being computed waits for it instead of redoing it."""

    def __init__(
        self, problem: object, curvature: Curvature, log: DecisionLog, task: Task | None = None,
        suspects: torch.Tensor | None = None, refine_steps: int = 0,
        weight_decay: float | None = None, prior: torch.Tensor | None = None, ranking: str = "",
        damping: float | None = None, excluded: torch.Tensor | None = None,
        rule: dmp.DampingRule | None = None,
    ) -> None:
        self.problem, self.curvature, self.log = problem, curvature, log
        self.task = task or ClassificationTask()
        self.train: ImageDataset = problem.train
        n = len(self.train)
        self.suspects = torch.arange(n) if suspects is None else torch.as_tensor(suspects).long()
        self.refine_steps = refine_steps
        self.prior = None if prior is None else torch.as_tensor(prior).double()
        self.ranking = ranking
        self.damping = damping  # the Newton step's lambda (named in refusals), when known
        self.use_rule(rule)  # per edit kind (audit.damping); None: `curvature`'s for all
        config = getattr(problem, "config", None)  # the training recipe's L2 strength
        self.weight_decay = weight_decay if weight_decay is not None else getattr(
            config, "weight_decay", 0.0)
        self.excluded = set() if excluded is None else set(torch.nonzero(
            torch.as_tensor(excluded))[:, 0].tolist())
        base = torch.as_tensor(log.labels)
        self._retrained = set(torch.nonzero(base != self.train.labels)[:, 0].tolist())

    def use_rule(self, rule: dmp.DampingRule | None) -> None:
        """Damp the Newton step by `rule` from now on; states stepped under another are dropped."""
        self.rule = rule
        self.kinds = dmp.kind_curvatures(self.curvature, rule) if rule and rule.calibrated else None
        self._cache = FutureCache(CACHE_SIZE)

    # -- decisions (committed before they return) ------------------------------------------
    def record(self, index: int, action: str, label: int | None = None,
               annotator: str = "") -> Decision:
        return self.log.record(index, action, label, annotator, self.log.version(),
                               self.ranking)

    def undo(self, decision_id: int, annotator: str = "") -> Decision:
        return self.log.undo(decision_id, annotator, self.log.version(), self.ranking)

    def apply(self, requests: Sequence[Request], annotator: str = "",
              model_version: int | None = None, ranking: str | None = None
              ) -> tuple[list[Decision], list[str]]:
        """DecisionLog.apply (all or nothing; requests in force are notes) under `ranking`
        (default: the session's), refusing, before anything is written, a batch whose Newton
        step is not finite (check_step)."""
        version = self.log.version() if model_version is None else model_version
        ranking = self.ranking if ranking is None else ranking
        planned = self.log.planned_edits(requests)  # validates; raises, writing nothing
        if planned is not None:  # outside the log's write lock: a state can take a while
            self.check_step(planned)

        def recheck(edits: dict[int, int | None]) -> None:  # another writer came in between
            if edits != planned:
                self.check_step(edits)

        return self.log.apply(requests, annotator, version, ranking, recheck)

    def check_step(self, edits: dict[int, int | None]) -> None:
        """Raise ValueError when the model these edits give has non-finite weights or outputs
        (the damped curvature is too close to singular); the state is cached for later."""
        remove = [i for i, y in edits.items() if y is REMOVED]
        relabel = {i: y for i, y in edits.items() if y is not REMOVED}
        state = self.state_for(remove, relabel)
        if not (bool(torch.isfinite(state.delta).all())
                and bool(torch.isfinite(state.suspect_logits).all())):
            raise ValueError(non_finite_message(self.damping))

    # -- the model -------------------------------------------------------------------------
    def edits(self, version: int | None = None) -> tuple[list[int], dict[int, int]]:
        """(removed indices, {index: new label}) from the active decisions (with id <= version;
        None: all), relative to the labels the model was trained on; examples outside its
        training set (`excluded`) wait for the next retrain."""
        rows = [d for d in self.log.decisions() if version is None or d.id <= version]
        e = edits(rows, self.log.labels)  # relative to the log's (base) labels
        remove, relabel = [], {}
        for i in sorted((set(e) | self._retrained) - self.excluded):
            target = e.get(i, self.log.labels[i])
            if target is REMOVED:
                remove.append(i)
            elif target != int(self.train.labels[i]):
                relabel[i] = target
        return remove, relabel

    def state(self, full_refresh: bool = False) -> AuditState:
        """The current model and its refreshed predictions / suspects (cached by edits)."""
        remove, relabel = self.edits()
        return self.state_for(remove, relabel, self.log.version(), full_refresh)

    def state_for(self, remove: list[int], relabel: dict[int, int], version: int = -1,
                  full_refresh: bool = False) -> AuditState:
        """The state of an explicit edit set (the log is not read): cached, thread-safe."""
        key = (tuple(sorted(remove)), tuple(sorted(relabel.items())), full_refresh)
        state = self._cache.get(key, lambda: self._compute(version, list(key[0]), dict(key[1]),
                                                           full_refresh))
        return dataclasses.replace(state, version=version)

    def model_delta(self, remove: list[int], relabel: dict[int, int]) -> torch.Tensor:
        """(p,) the batched Newton step (plus refinement) for these edits, from the base."""
        remove, relabel = dmp.applied(self.kinds, remove, relabel)
        delta = dmp.kinds_step(self.curvature, self.kinds, self.task, self.train, remove,
                               relabel, self.weight_decay)
        if self.refine_steps and delta.any():
            delta = refine(self.curvature, self.task, self.train, delta, remove, relabel,
                           steps=self.refine_steps, weight_decay=self.weight_decay)
        return delta

    def _compute(self, version: int, remove: list[int], relabel: dict[int, int],
                 full_refresh: bool) -> AuditState:
        seconds, start = {}, time.perf_counter()
        delta = self.model_delta(remove, relabel)
        model = updated_model(self.curvature, delta)
        seconds["newton_step"] = time.perf_counter() - start
        labels = self.train.labels.clone()
        for i, y in relabel.items():
            labels[i] = y
        removed = torch.zeros(len(labels), dtype=torch.bool)
        removed[torch.tensor(remove + sorted(self.excluded), dtype=torch.long)] = True
        curv, notes = rebind(self.curvature, model), APPROXIMATIONS
        if full_refresh:
            start = time.perf_counter()
            curv = self._refit(model, labels, removed)
            seconds["refit"] = time.perf_counter() - start
            notes = APPROXIMATIONS[:1]
        start = time.perf_counter()
        edited = self.train.with_labels(labels)
        remaining = self.suspects[~removed[self.suspects]]
        scores = self_influence(curv, self.task, edited, indices=remaining)
        key = scores if self.prior is None else self.prior[remaining]
        order = torch.argsort(key, descending=True, stable=True)
        if len(order):  # one forward over the suspects: their losses and the queue's columns
            logits = _logits(model, subset(edited, remaining[order]))
            losses = self.task.loss(logits, edited.labels[remaining[order]])
        else:
            logits, losses = torch.zeros(0, self.train.num_classes), torch.zeros(0)
        seconds["self_influence"] = time.perf_counter() - start
        edits = (tuple(remove), tuple(sorted(relabel.items())))
        return AuditState(version, model, delta, labels, removed, self.problem.test,
                          remaining[order], scores[order], losses, logits, edits, seconds, notes)

    def _refit(self, model: nn.Module, labels: torch.Tensor, removed: torch.Tensor) -> Curvature:
        keep = torch.nonzero(~removed)[:, 0]
        data = subset(self.train.with_labels(labels), keep)
        tracked = rebind(self.curvature, model).tracked
        return fit_curvature(self.curvature.name, tracked, self.task, data)

    # -- export ----------------------------------------------------------------------------
    def export(self, folder: str | Path) -> tuple[Path, Path]:
        """Write labels.csv (the cleaned label file) and model.pt (the updated state_dict)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        csv_path = self.log.export_csv(folder / "labels.csv")  # original = as trained on
        ckpt = folder / "model.pt"
        save_atomic(self.state().model.state_dict(), ckpt)
        return csv_path, ckpt


@torch.no_grad()
def _logits(model: nn.Module, data: ImageDataset) -> torch.Tensor:
    dtype = next(model.parameters()).dtype
    return torch.cat([model(x.to(dtype)) for x, _, _ in data.batches(128)])  # cache-sized


def non_finite_message(damping: float | None) -> str:
    """The refusal of a Newton step (or a prediction from it) that is not finite."""
    at = f" at damping {damping:g}" if damping else ""
    return (f"the Newton step is not finite{at}: nothing recorded; choose a larger damping "
            "(unlearn --damping, the app's damping lambda; unset: 1000 x the weight decay)")


def decision_log_path(problem: object) -> Path:
    """Where a problem's decisions live, for the CLI and the app alike: one log per model.
    The recipe's own checkpoint: artifacts/decisions/<its checkpoint folder>.db; a user's
    checkpoint (problem.meta["checkpoint"]): artifacts/decisions/<dataset>-<model>-<hash of
    its weights>.db, so the same weights find the same log from any path."""
    from ..artifacts import model_hash
    from ..config import artifacts_root

    if not problem.meta.get("checkpoint"):
        return artifacts_root() / "decisions" / f"{Path(problem.checkpoint).parent.name}.db"
    name = f"{problem.config.dataset}-{problem.config.model}-{model_hash(problem.model)}"
    return artifacts_root() / "decisions" / f"{name.replace(':', '_').replace('/', '_')}.db"


def open_session(
    problem: object, method: str = "ekfac", log_path: str | Path | None = None,
    progress: Progress = silent, damping: float | None = None, fitted: Curvature | None = None,
    log_labels: torch.Tensor | None = None, **kwargs: object,
) -> AuditSession:
    """Fit `method`'s curvature on the base model and open (or create) its decision log.
    `fitted`: a fit of the same method and config on the same model (the attribution index's
    EK-FAC) to reuse with this damping instead of fitting again.

    damping: absolute lambda of H = G + lambda I for every edit kind. None: the model's
    calibration for this method (audit.damping.model_rule: a lambda per edit kind, or no step
    for a kind where none beat doing nothing), else newton_damping's default, 1000 x the
    recipe's weight decay (1e-3 without one). The identity method has no damping.
    `log_labels`: the labels the log was created for (a later cleaning round: the base ones)."""
    task, config = ClassificationTask(), getattr(problem, "config", None)
    log_path = Path(log_path or decision_log_path(problem))
    given, damping = damping, newton_damping(config, damping)
    rule = (given is None and dmp.model_rule(problem, log_path, method)
            ) or dmp.default_rule(config, given)
    cfg = CURVATURE_CONFIGS[method](damping=damping) if method != "identity" else None
    if fitted is not None and fitted.name == method:  # the same fit, this damping
        curv = fitted.rebased(TrackedModel(problem.model), damping)
    else:
        curv = fit_curvature(method, TrackedModel(problem.model), task, problem.train, cfg,
                             progress=progress)
    log = DecisionLog(log_path, problem.train.labels if log_labels is None else log_labels,
                      problem.train.num_classes)
    return AuditSession(problem, curv, log, task, damping=damping, rule=rule, **kwargs)
