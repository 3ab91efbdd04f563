"""The Review page's use of influence_core.Claims (one per server, in state.claims()): which
suspect this session shows, whether it is the only one reviewing, and giving its card back."""

from __future__ import annotations

from collections.abc import Hashable

import pandas as pd

from dashboard import state

ACTIVE_S = 30.0


def current_suspect(rows: pd.DataFrame, key: Hashable) -> int | None:
    """The review position from the URL, else the first unreviewed row of `rows` that no other
    session is showing (`key`: the queue's workspace)."""
    pinned = state.url_int(state.SUSPECT)
    if pinned is not None:
        return pinned
    todo = [int(i) for i in rows.loc[rows["decision"] == "", "index"]]
    return state.claims().pick(key, state.review_token(), todo)


def alone(key: Hashable) -> bool:
    """Is this the only session that worked on queue `key` in the last ACTIVE_S seconds? (Only
    then does prefetching the next click pay: with others deciding too, the next card and the
    next model version are rarely the ones it would guess.)"""
    return state.claims().active(key, ACTIVE_S) <= 1


def release() -> None:
    """After Undo: show the first unreviewed suspect again (the undone one, unless another
    session has taken it)."""
    state.claims().release(state.review_token())
