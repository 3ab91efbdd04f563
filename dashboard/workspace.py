"""What the shared sidebar selects (Selection) and what the Setup step opens for it (Workspace):
plain values and one composition of core calls. No Streamlit here: dashboard.state keeps the
selection in session state and the workspace in st.cache_resource, shared by every session."""

from __future__ import annotations

from dataclasses import dataclass

from influence_core import (
    AttributionIndex,
    AuditSession,
    Problem,
    Progress,
    ReviewCache,
    open_audit,
    open_index,
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
    def key(self) -> tuple:
        """What determines the workspace (the annotator does not)."""
        return (self.dataset, self.model, self.data_root, self.checkpoint, self.method,
                self.damping)


@dataclass
class Workspace:
    """One problem's attribution index and audit session (shared by every browser session)."""

    key: tuple
    problem: Problem
    index: AttributionIndex
    session: AuditSession
    queries: object  # (M, dim) index vectors of the test queries (influence_core.query_vectors)
    cache: ReviewCache  # evidence and previews, prefetched while a card is on screen


def open_workspace(sel: Selection, problem: Problem, progress: Progress) -> Workspace:
    """The Setup step: precompute (or load) the index, open the audit session, and compute the
    test queries' index vectors (Explore's training cards: (M, dim) @ x_i)."""
    index = open_index(problem, progress)
    session = open_audit(problem, index, sel.method, sel.damping, progress=progress)
    progress(0, 1, "Setup: index vectors of the test queries")
    queries = query_vectors(index, problem.test)
    return Workspace(sel.key, problem, index, session, queries, ReviewCache(session, index, TOP_K))
