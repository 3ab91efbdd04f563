"""The Review page's answers, computed before they are asked for.

While an annotator looks at suspect i, a background thread computes what the next click will
need: the states after relabelling i (to the suggested class) and after removing it (Newton step,
re-ranked queue), and for the card each click leads to (the next suspect after any decision, the
neighbour for "Next") its evidence and both edit previews. A click then mostly reads caches.

Everything is keyed by what it is a function of (evidence: example and label; previews: the
state's edit set, example, action, label), so a speculative answer is exactly the answer the
click would have computed. Entries are futures: asking for one that is being computed waits for
it. A newer `warm` call makes the older one stop at its next step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from ..app_api import Evidence, Preview, evidence, preview, train_probabilities
from ..attribution.index import AttributionIndex
from ..memo import FutureCache
from .session import AuditSession, AuditState
from .suggest import Suggester

CACHE_ENTRIES = 512


def next_suspect(state: AuditState, reviewed: Iterable[int]) -> int | None:
    """The first suspect of `state`'s queue without a decision (None when all have one)."""
    done = set(reviewed)
    return next((j for j in state.suspects.tolist() if j not in done), None)


class ReviewCache:
    """Thread-safe LRU of evidence and previews, plus a one-thread background prefetcher."""

    def __init__(self, session: AuditSession, index: AttributionIndex, top_k: int = 8,
                 entries: int = CACHE_ENTRIES, suggester: Suggester | None = None) -> None:
        self.session, self.index, self.top_k, self.entries = session, index, top_k, entries
        self.suggester = suggester
        self._lock = threading.Lock()  # guards _generation
        self._cached = FutureCache(entries).get
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="review-prefetch")
        self._generation = 0

    def forget(self) -> None:
        """Drop every cached preview and suggestion (the session's Newton step changed) and stop
        the prefetch under way."""
        with self._lock:
            self._generation += 1
        self._cached = FutureCache(self.entries).get

    def evidence(self, i: int, label: int) -> Evidence:
        """app_api.evidence (model-independent: it reads the precomputed index)."""
        return self._cached(("evidence", i, label), lambda: evidence(
            self.index, self.session.train, i, label, self.top_k))

    def suggested(self, state: AuditState, i: int) -> int:
        """The card's suggested label for suspect i under `state` (the suggester's rule with the
        current model's probabilities; without a suggester, the evidence's)."""
        given = int(state.labels[i])
        if self.suggester is None:
            return self.evidence(i, given).suggested
        return self._cached(("suggested", state.edits, i), lambda: self.suggester.suggest(
            i, given, train_probabilities(state, self.session.train, [i])[0]))

    def preview(self, state: AuditState, i: int, action: str, label: int | None = None
                ) -> Preview:
        """app_api.preview on top of `state`'s edits."""
        label = label if action == "relabel" else None
        return self._cached(("preview", state.edits, i, action, label),
                            lambda: preview(self.session, state, i, action, label))

    def card(self, state: AuditState, j: int) -> None:
        """Everything the Review card of suspect j shows under `state`."""
        self.evidence(j, int(state.labels[j]))
        suggested = self.suggested(state, j)
        self.preview(state, j, "remove")
        self.preview(state, j, "relabel", suggested)

    def warm(self, state: AuditState, i: int, reviewed: Iterable[int],
             neighbour: int | None = None) -> Future:
        """Schedule, in the background, what the clicks available on suspect i's card need."""
        with self._lock:
            self._generation += 1
            generation = self._generation
        return self._worker.submit(self._warm, generation, state, i, frozenset(reviewed),
                                   neighbour)

    def _warm(self, generation: int, state: AuditState, i: int, reviewed: frozenset[int],
              neighbour: int | None) -> None:
        def stale() -> bool:
            return generation != self._generation

        after = reviewed | {i}
        remove, relabel = list(state.edits[0]), dict(state.edits[1])
        suggested = self.suggested(state, i)
        steps: list[Callable[[], None]] = [lambda: self.card(state, i)]
        if not state.removed[i]:  # the likeliest clicks first: relabel (suggested), then remove
            edits = [(remove, {**relabel, i: suggested}),
                     (sorted({*remove, i}), {k: v for k, v in relabel.items() if k != i})]
            for r, rl in edits:
                steps.append(lambda r=r, rl=rl: self._next_card(
                    self.session.state_for(r, rl), after))
        steps.append(lambda: self._next_card(state, after))  # after Keep
        if neighbour is not None:  # after Next
            steps.append(lambda: self.card(state, neighbour))
        for step in steps:
            if stale():
                return
            step()

    def _next_card(self, state: AuditState, reviewed: frozenset[int]) -> None:
        j = next_suspect(state, reviewed)
        if j is not None:
            self.card(state, j)

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
