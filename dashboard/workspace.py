"""What the shared sidebar selects (Selection) and what the Setup step opens for it: the problem's
attribution index (Attribution), then one Workspace per suspect ranking over it. Plain values
and compositions of core calls. No Streamlit here: dashboard.state keeps the selection in
session state and both in st.cache_resource, shared by every session."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from influence_core import (
    AttributionIndex,
    AuditSession,
    Problem,
    Progress,
    ReviewCache,
    Round,
    open_audit,
    open_index,
    open_round_audit,
    open_suggester,
    query_vectors,
)

TOP_K = 8  # training images per list (helpful, harmful, support, oppose)


@dataclass(frozen=True)
class Selection:
    """The shared sidebar's choices; every page reads them through `state.selection()`."""

    dataset: str = "digits"
    model: str = "mlp"
    data_root: str = ""
    checkpoint: str = ""  # a user's state_dict; "" = the recipe's own trained checkpoint
    method: str = "ekfac"  # curvature for the Newton step (the index is always EK-FAC)
    damping: float | None = None  # Newton step's lambda; None: open_session's default
    annotator: str = "anonymous"

    @property
    def problem_key(self) -> tuple:
        """What determines the problem and its attribution index."""
        return (self.dataset, self.model, self.data_root, self.checkpoint)

    @property
    def key(self) -> tuple:
        """What determines the audit session, but for its ranking (the annotator does not)."""
        return (*self.problem_key, self.method, self.damping)


class QueryVectors:
    """The test queries' index vectors (influence_core.query_vectors), computed on first use
    (Explore's training cards), not before the first Review card; thread-safe."""

    def __init__(self, index: AttributionIndex, test: object) -> None:
        self._index, self._test, self._lock, self._vectors = index, test, threading.Lock(), None

    def get(self) -> object:
        with self._lock:
            if self._vectors is None:
                self._vectors = query_vectors(self._index, self._test)
            return self._vectors


@dataclass(frozen=True)
class Attribution:
    """One problem's attribution index and the test queries' index vectors (every ranking's)."""

    index: AttributionIndex
    queries: QueryVectors


@dataclass
class Workspace:
    """One problem's attribution index and the audit session whose queue one suspect ranking
    orders (shared by every browser session)."""

    key: tuple  # Selection.key + (ranking, round number: 1 for the recipe's own model)
    problem: Problem
    index: AttributionIndex
    session: AuditSession
    queries: QueryVectors  # the test queries' index vectors, on first use
    cache: ReviewCache  # evidence and previews, prefetched while a card is on screen


def open_attribution(problem: Problem, progress: Progress) -> Attribution:
    """The Setup step's first part: precompute (or load) the index; the test queries' index
    vectors (Explore's training cards: (M, dim) @ x_i) follow on first use."""
    index = open_index(problem, progress)
    return Attribution(index, QueryVectors(index, problem.test))


def open_workspace(sel: Selection, problem: Problem, attribution: Attribution, ranking: str,
                   progress: Progress, rnd: Round | None = None) -> Workspace:
    """The Setup step's second part: the audit session whose queue `ranking` (a RANKINGS key)
    orders; its suspect scores may need extra trainings (reported through `progress`, cached).
    In a cleaning round `rnd` (problem: the base one; attribution: the round model's index) the
    round's own queue orders it, and the workspace holds the round's problem."""
    index = attribution.index
    if rnd is None:
        session = open_audit(problem, index, sel.method, sel.damping, progress=progress,
                             ranking=ranking)
    else:
        session = open_round_audit(problem, rnd, index, sel.method, sel.damping, progress)
    number = 1 if rnd is None else rnd.number
    return Workspace((*sel.key, ranking, number), session.problem, index, session,
                     attribution.queries, ReviewCache(session, index, TOP_K, suggester=(
                         open_suggester(session.problem, session.ranking))))
