"""Cleaning rounds for the app and the CLI (audit.rounds), over the model's own decision log.

The app reviews the newest complete round of the selected recipe: its model, labels, index and
queue (`current_round`, `round_problem`, `open_round_audit`); "Retrain on reviewed labels"
runs `retrain_reviewed` as a background job and the next page run opens the new round.
"Calibrate the Newton step" runs `calibrate_review` on the model under review."""

from __future__ import annotations

from pathlib import Path

from .attribution.index import AttributionIndex
from .audit import damping as dmp
from .audit.rounds import (
    Round,
    list_rounds,
    open_round_session,
    retrain_round,
    round_problem,
    rounds_root,
)
from .audit.session import AuditSession, decision_log_path
from .audit.store import DecisionLog
from .data.registry import Problem
from .progress import Progress, silent

__all__ = ["Round", "calibrate_review", "current_round", "open_round_audit", "refresh_calibration",
           "retrain_reviewed", "round_problem"]


def _log(problem: Problem) -> DecisionLog:
    return DecisionLog(decision_log_path(problem), problem.train.labels,
                       problem.train.num_classes)


def current_round(problem: Problem) -> Round | None:
    """The newest complete round of the recipe's model under its decision log; None for the
    base model (no round yet, or a user's own checkpoint: it has no recipe run to repeat)."""
    if problem.meta.get("checkpoint"):
        return None
    done = list_rounds(rounds_root(problem, decision_log_path(problem)))
    return done[-1] if done else None


def retrain_reviewed(problem: Problem, progress: Progress = silent) -> Round:
    """audit.rounds.retrain_round on the model's decision log: the next round (or the newest
    one, when it already holds every decision). The log is only read."""
    log = _log(problem)
    try:
        return retrain_round(problem, log, progress=progress)
    finally:
        log.close()


def open_round_audit(problem: Problem, rnd: Round, index: AttributionIndex, method: str = "ekfac",
                     damping: float | None = None, progress: Progress = silent
                     ) -> AuditSession:
    """The audit session of round `rnd` of the recipe `problem` (the base one): its queue (the
    round's ranking, audit.rounds.QUEUE_RANKING, reviewed examples left out), the model's
    decision log. `index` is the round model's (rounds build it; passed to say which model the
    session explains)."""
    if Path(rnd.meta["index"]).resolve() != Path(index.folder).resolve():
        raise ValueError(f"the index at {index.folder} is not round {rnd.number}'s")
    return open_round_session(problem, decision_log_path(problem), rnd, method, progress,
                              damping)


def calibrate_review(session: AuditSession, progress: Progress = silent) -> dmp.DampingRule:
    """Run the damping rule (audit.damping.calibrate: four retrainings of the recipe, then the
    Newton step at every damping of the grid) on the model `session` reviews, keep the result
    with that model, and damp the session's step by it from now on. Raises ValueError for a
    user's own checkpoint (no recipe run to repeat) or a curvature whose damping cannot change
    without a refit."""
    problem = session.problem
    if problem.meta.get("checkpoint") and not problem.meta.get("round"):
        raise ValueError("calibration retrains the recipe, which did not make a loaded checkpoint")
    path = dmp.model_calibration_path(problem, session.log.path, session.curvature.name)
    rule = dmp.calibrate(problem, session.curvature, path, progress, session.excluded)
    session.use_rule(rule)
    return rule


def refresh_calibration(session: AuditSession) -> bool:
    """Adopt a calibration of the session's model written after the session opened (by another
    session on the same model, or `python -m influence_core calibrate`). True when the rule
    changed. Call it only for a session without an explicit damping."""
    rule = session.rule
    if rule is None or (rule.calibrated and not rule.from_base):
        return False
    found = dmp.model_rule(session.problem, session.log.path, session.curvature.name)
    if found is None or found == rule:
        return False
    session.use_rule(found)
    return True
