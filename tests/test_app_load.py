"""Concurrent annotators in the app itself: 8 AppTest sessions (one script run each at a time,
sharing the server's caches as browser sessions do) press Keep on their current card for a
bounded time. Every decision a session saw committed is in the log once; no session raised."""

from __future__ import annotations

import re
import sqlite3
import statistics
import threading
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest
from test_app import APP, RUN_TIMEOUT_S, app, home  # noqa: F401  (fixtures)

SESSIONS = 8
SECONDS = 8.0


def _suspect(at: AppTest) -> int | None:
    found = [m for m in (re.search(r"Suspect #(\d+)", md.value) for md in at.markdown) if m]
    return int(found[0].group(1)) if found else None


# long: eight sessions in threads, each clicking until the time is up, then the log's check
def test_eight_app_sessions_review_at_once(app, home: Path) -> None:  # noqa: F811
    first = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT_S)
    first.switch_page("views/review.py")
    first.run()  # trains and precomputes once; the sessions below share it
    assert not first.exception
    sessions = []
    for k in range(SESSIONS):
        at = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT_S)
        at.query_params.update(annotator=f"load{k}")
        at.switch_page("views/review.py")
        sessions.append(at.run())
    done: dict[int, list[tuple[int, str]]] = {k: [] for k in range(SESSIONS)}
    latencies: list[float] = []
    errors: list[str] = []
    stop = time.monotonic() + SECONDS

    def work(k: int) -> None:
        at = sessions[k]
        while time.monotonic() < stop:
            i = _suspect(at)
            if i is None:
                return
            start = time.perf_counter()
            at.button(key="act_keep").click().run()
            latencies.append(time.perf_counter() - start)
            if at.exception:
                errors.append(str(at.exception[0].value))
                return
            notices = [w.value for w in at.warning if "Not recorded" in w.value]
            if not notices:
                done[k].append((i, f"load{k}"))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SECONDS + 120)
    assert not errors, errors[:3]
    [db] = home.glob("decisions/*.db")
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT idx, annotator FROM decisions WHERE action = 'keep' AND "
                           "annotator LIKE 'load%'").fetchall()
    claimed = [d for ds in done.values() for d in ds]
    assert len(rows) == len(set(rows)), "a decision was written twice"
    assert set(claimed) <= set(rows), "a decision a session saw committed is missing"
    assert len(claimed) >= SESSIONS, "the sessions made progress"
    p95 = statistics.quantiles(latencies, n=20)[-1] if len(latencies) >= 20 else max(latencies)
    print(f"{len(rows)} decisions by {SESSIONS} sessions in {SECONDS:g} s; "
          f"p95 click {1000 * p95:.0f} ms")
