"""Which Review card each annotator's session is showing, so that sessions working through one
queue at the same time see different suspects instead of all meeting at its head (where every
decision but the first would be refused as already made).

A session holds the unreviewed suspect it shows until it decides on it or moves on; the others
are shown the first unreviewed suspect that nobody else holds. A hold lapses after `hold_s`
without a pick by its session (a closed tab). With every unreviewed suspect held, sessions
share."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence

HOLD_S = 180.0


class Claims:
    """session token -> (queue key, suspect, last seen); thread-safe (one per server)."""

    def __init__(self, hold_s: float = HOLD_S) -> None:
        self.hold_s = hold_s
        self._lock = threading.Lock()
        self._held: dict[str, tuple[Hashable, int, float]] = {}

    def pick(self, key: Hashable, me: str, todo: Sequence[int]) -> int | None:
        """The suspect session `me` shows from `todo` (unreviewed, in queue order)."""
        now = time.monotonic()
        with self._lock:
            if not todo:
                self._held.pop(me, None)
                return None
            mine = self._held.get(me)
            if mine is not None and mine[0] == key and mine[1] in todo:
                pick = mine[1]
            else:
                others = {i for s, (k, i, seen) in self._held.items()
                          if s != me and k == key and now - seen < self.hold_s}
                pick = next((i for i in todo if i not in others), todo[0])
            self._held[me] = (key, pick, now)
            return pick

    def active(self, key: Hashable, within_s: float) -> int:
        """How many sessions ran on queue `key` in the last `within_s` seconds."""
        now = time.monotonic()
        with self._lock:
            return sum(k == key and now - seen < within_s for k, _, seen in self._held.values())

    def release(self, me: str) -> None:
        """Session `me` holds nothing (its next pick starts from the head of the queue)."""
        with self._lock:
            self._held.pop(me, None)
