"""Review sessions working through one queue at once are shown different suspects."""

from __future__ import annotations

import pytest

from influence_core import Claims


def test_sessions_get_different_cards_and_keep_their_own() -> None:
    claims = Claims()
    todo = [5, 3, 9, 1]
    assert [claims.pick("q", s, todo) for s in ("a", "b", "c")] == [5, 3, 9]
    assert claims.pick("q", "b", todo) == 3  # a rerun keeps the card
    assert claims.pick("q", "a", [3, 9, 1]) == 1  # a decided on 5: next that nobody holds
    assert claims.pick("q", "d", [3, 9, 1]) == 3  # all held: share the head
    assert claims.pick("other", "e", todo) == 5  # another queue: independent
    assert claims.pick("q", "a", []) is None


def test_a_released_or_lapsed_hold_frees_the_card(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("influence_core.audit.claims.time.monotonic", lambda: clock[0])
    claims = Claims(hold_s=60)
    assert claims.pick("q", "a", [1, 2]) == 1
    assert claims.pick("q", "b", [1, 2]) == 2
    claims.release("a")
    assert claims.pick("q", "c", [1, 2]) == 1  # a released it
    clock[0] += 61
    assert claims.pick("q", "d", [1, 2]) == 1  # c's and b's holds lapsed
    assert claims.pick("q", "b", [1, 2]) == 2  # b's own card, even after lapsing


def test_active_counts_recent_sessions_of_one_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr("influence_core.audit.claims.time.monotonic", lambda: clock[0])
    claims = Claims()
    claims.pick("q", "a", [1, 2])
    claims.pick("other", "b", [1, 2])
    assert claims.active("q", 30) == 1
    clock[0] += 10
    claims.pick("q", "c", [1, 2])
    assert claims.active("q", 30) == 2
    clock[0] += 25
    assert claims.active("q", 30) == 1  # a last ran 35 s ago
