"""Load on the decision path: several annotators reviewing the same training set at once, each
through its own session and log handle on one log file, clicking through app_tables.record_many
(what the Review page's buttons call). Nothing may be lost or duplicated, no click may raise;
two annotators deciding on the same example at once are both logged and the later one wins."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ..app_tables import record_decision, record_many
from ..audit.session import AuditSession, open_session
from ..audit.store import DecisionLog

QUEUE = 500  # suspects per session, the app's queue size
ACTIONS = (("keep", 0.7), ("relabel", 0.2), ("remove", 0.1))  # a reviewer's mix of clicks


def _sessions(problem: object, path: Path, count: int) -> list[AuditSession]:
    """`count` sessions, each with its own handle on the log at `path`, sharing one curvature
    fit (as the app's sessions share its cached fit)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)  # a fresh log
    first = open_session(problem, "kfac", path, suspects=torch.arange(QUEUE))
    train = problem.train
    others = [AuditSession(problem, first.curvature, DecisionLog(path, train.labels,
                                                                 train.num_classes),
                           first.task, suspects=first.suspects, damping=first.damping)
              for _ in range(count - 1)]
    return [first, *others]


def _reviewer(session: AuditSession, name: str, seed: int, deadline: float, out: dict) -> None:
    rng = random.Random(seed)
    n, k = len(session.train), session.train.num_classes
    reported, latencies, refused, errors = [], [], 0, []
    while time.perf_counter() < deadline:
        i = rng.randrange(min(n, QUEUE))
        action = rng.choices([a for a, _ in ACTIONS], [w for _, w in ACTIONS])[0]
        label = (session.log.labels[i] + rng.randrange(1, k)) % k if action == "relabel" else None
        start = time.perf_counter()
        try:
            done, _ = record_many(session, [i], action, [label], name,
                                  session.log.version())
        except Exception as exc:  # a click that raises is what this test exists to find
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        latencies.append(time.perf_counter() - start)
        reported += [d.id for d in done]
        refused += not done
    out[name] = {"reported": reported, "latencies": latencies, "refused": refused,
                 "errors": errors}


def concurrent_review(problem: object, folder: Path, sessions: int = 8, seconds: float = 10.0
                      ) -> dict:
    """`sessions` threads clicking for `seconds`; decisions per second, p95 latency per click,
    and the lost (reported, not in the log), duplicated and unreported rows."""
    handles = _sessions(problem, folder / "decisions.db", sessions)
    out: dict = {}
    deadline = time.perf_counter() + seconds
    threads = [threading.Thread(target=_reviewer, args=(h, f"annotator{j}", j, deadline, out))
               for j, h in enumerate(handles)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    reported = [i for r in out.values() for i in r["reported"]]
    ids = {d.id for d in handles[0].log.decisions()}
    latencies = np.array([x for r in out.values() for x in r["latencies"]])
    for h in handles:
        h.log.close()
    return {"sessions": sessions, "seconds": round(elapsed, 1), "clicks": len(latencies),
            "decisions": len(reported), "refused_clicks": sum(r["refused"] for r in out.values()),
            "decisions_per_s": round(len(reported) / elapsed, 1),
            "p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 1),
            "p95_ms": round(float(np.percentile(latencies, 95)) * 1e3, 1),
            "lost": len(set(reported) - ids), "duplicated": len(reported) - len(set(reported)),
            "unreported_rows": len(ids - set(reported)),
            "errors": sum(len(r["errors"]) for r in out.values()),
            "first_errors": [e for r in out.values() for e in r["errors"]][:3]}


def same_example_race(problem: object, folder: Path, index: int = 7) -> dict:
    """Two annotators relabel training example `index` at the same instant (to two different
    labels): both rows are logged, the later row is the active decision, and the session whose
    decision was overtaken sees the winner's label on its next read."""
    a, b = _sessions(problem, folder / "decisions.db", 2)
    k, y = problem.train.num_classes, int(problem.train.labels[index])
    labels = {"a": (y + 1) % k, "b": (y + 2) % k}
    start = threading.Barrier(2)
    results: dict = {}

    def click(session: AuditSession, name: str) -> None:
        start.wait()
        results[name] = record_decision(session, index, "relabel", labels[name], name,
                                        session.log.version())

    threads = [threading.Thread(target=click, args=(s, n)) for s, n in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = [d for d in a.log.decisions() if d.index == index]
    later = max(rows, key=lambda d: d.id) if rows else None
    earlier = {"a": a, "b": b}["b" if later and later.annotator == "a" else "a"]
    seen = int(earlier.state().labels[index]) if later else None
    report = {"both_logged": len(rows) == 2 and not any(results.values()),
              "later_wins": later is not None and a.log.edits().get(index) == later.label,
              "other_session_sees_it": later is not None and seen == later.label,
              "refusals": [r for r in results.values() if r]}
    a.log.close(), b.log.close()
    return report
