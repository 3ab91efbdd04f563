"""The decision log: an append-only SQLite table of annotator decisions, durable before success.

Every decision is one row Decision(id, index, action, label, annotator, ts, model_version,
undoes, ranking), action in {relabel, remove, keep, undo}; ranking is the key of the suspect
ranking (suspects.RANKINGS) the queue was ordered by when the annotator decided, "" when unknown
(the CLI; rows written before the column existed: opening such a log adds the column). Nothing
is ever updated or deleted: undoing decision d appends an `undo` row with undoes = d. The log
runs in WAL mode with synchronous=FULL, and `record` / `undo` return only after COMMIT, so a
decision that was reported is on disk even if the process is killed the next instant. Writers
serialise through BEGIN IMMEDIATE (with a busy timeout): validation and insert happen in one
transaction, so two processes or sessions writing at once lose nothing and cannot both remove
the same point. `apply` does the same for a batch: every request is validated first, then all
are committed in one transaction or none; requests already in force are skipped and reported.
A file that is not a decision log is refused, never replaced (log_files.check_log_file).

The edited training set is a pure function of the log: replay the active (not undone) decisions
in id order; for each index the last relabel / remove wins, and `keep` changes nothing (it
records that the point was reviewed). The model version is the id of the newest row (0: empty).
"""

from __future__ import annotations

import csv
import hashlib
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from .decisions import (
    ACTIONS,
    REMOVED,
    Decision,
    Request,
    active_decisions,
    check_index,
    check_label,
    edits,
    plan_batch,
)
from .log_files import BUSY_TIMEOUT_S, DecisionLogError, backup_log, check_log_file, use_wal

__all__ = ["ACTIONS", "REMOVED", "Decision", "DecisionLog", "DecisionLogError", "Request",
           "active_decisions", "backup_log", "edits"]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    idx INTEGER NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('relabel', 'remove', 'keep', 'undo')),
    label INTEGER,
    annotator TEXT NOT NULL,
    ts TEXT NOT NULL,
    model_version INTEGER NOT NULL,
    undoes INTEGER REFERENCES decisions(id),
    ranking TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class DecisionLog:
    """An open decision log for one training set (N labels, K classes); several handles, in
    one process or several, may write to the same file at once."""

    def __init__(self, path: str | Path, labels: Sequence[int], num_classes: int) -> None:
        self.path = Path(path)
        self.labels = labels.tolist() if hasattr(labels, "tolist") else [int(y) for y in labels]
        self.num_classes = int(num_classes)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
        try:
            self._db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            check_log_file(self._db, self.path)  # before anything is written to it
            use_wal(self._db)
            self._db.execute("PRAGMA synchronous=FULL")
            with self._transaction() as cur:
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    cur.execute(stmt)
                _add_ranking_column(cur)
                self._check_meta(cur)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self._lock, self.path)

    def _check_meta(self, cur: sqlite3.Cursor) -> None:
        digest = hashlib.sha256(",".join(map(str, self.labels)).encode()).hexdigest()[:16]
        want = {"num_train": str(len(self.labels)), "num_classes": str(self.num_classes),
                "labels_sha256": digest}
        have = dict(cur.execute("SELECT key, value FROM meta").fetchall())
        if not have:
            cur.executemany("INSERT INTO meta VALUES (?, ?)", sorted(want.items()))
        elif have != want:
            raise DecisionLogError(
                f"{self.path} belongs to another training set: it was created for {have}, this "
                f"one is {want}; nothing was changed (choose another log path, or move it aside)")

    # -- reading ---------------------------------------------------------------------------
    def decisions(self) -> list[Decision]:
        """Every row, undo rows included, in id order."""
        with self._lock:
            return _read(self._db)

    def active_decisions(self) -> list[Decision]:
        return active_decisions(self.decisions())

    def version(self) -> int:
        """The model version: id of the newest row, 0 for an empty log."""
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM decisions").fetchone()[0])

    def edits(self) -> dict[int, int | None]:
        """index -> final label or REMOVED (None), see `edits`."""
        return edits(self.decisions(), self.labels)

    # -- writing ---------------------------------------------------------------------------
    def record(self, index: int, action: str, label: int | None = None, annotator: str = "",
               model_version: int | None = None, ranking: str = "") -> Decision:
        """Validate and append one relabel / remove / keep decision, made while the queue was
        ordered by `ranking` (a suspects.RANKINGS key, "" when unknown); returns it committed.

        Raises ValueError, writing nothing, for an index outside the training set, a label
        outside 0..K-1, a relabel to the current label, or a decision on a removed point."""
        if action not in ("relabel", "remove", "keep"):
            raise ValueError(f"action must be relabel, remove or keep, got {action!r}")
        index = check_index(index, len(self.labels))
        if action == "relabel":
            label = check_label(label, self.num_classes)
        elif label is not None:
            raise ValueError(f"a {action} decision takes no label (got {label})")
        with self._transaction() as cur:
            current = edits(_read(cur), self.labels)
            state = current.get(index, self.labels[index])
            if state is REMOVED:
                raise ValueError(f"index {index} is removed: undo the removal first")
            if action == "relabel" and label == state:
                raise ValueError(f"index {index} already has label {label}")
            return self._insert(cur, index, action, label, annotator, model_version, None,
                                ranking)

    def planned_edits(self, requests: Sequence[Request]) -> dict[int, int | None] | None:
        """The edits (see `edits`) the log would hold after `apply(requests)`, None when the
        batch would change nothing; validates like `apply`, writes nothing."""
        with self._lock:
            plan = plan_batch(_read(self._db), self.labels, self.num_classes, requests)
        return plan.edits if plan.undos or plan.writes else None

    def apply(self, requests: Sequence[Request], annotator: str = "",
              model_version: int | None = None, ranking: str = "",
              check: Callable[[dict[int, int | None]], None] | None = None
              ) -> tuple[list[Decision], list[str]]:
        """Validate a batch of (action, index, label) requests ("undo": index is a decision id),
        then commit all of it in one transaction, or nothing (decisions.plan_batch: undos
        first, requests already in force skipped with a note, so re-running a batch changes
        nothing). `check(edits)` sees the edit set the batch would produce and may raise
        ValueError to refuse it. Returns (committed, notes). Raises ValueError naming every
        refused request, writing nothing."""
        with self._transaction() as cur:
            rows = _read(cur)
            plan = plan_batch(rows, self.labels, self.num_classes, requests)
            if check is not None and (plan.undos or plan.writes):
                check(plan.edits)
            if model_version is None:  # one version for the whole batch: the head before it
                model_version = max((d.id for d in rows), default=0)
            done = [self._insert(cur, d.index, "undo", None, annotator, model_version, d.id,
                                 ranking) for d in plan.undos]
            return done + [self._insert(cur, i, a, y, annotator, model_version, None, ranking)
                           for a, i, y in plan.writes], plan.notes

    def undo(self, decision_id: int, annotator: str = "", model_version: int | None = None,
             ranking: str = "") -> Decision:
        """Append an undo of an active relabel / remove / keep decision (`ranking`: the one the
        undoing session's queue is ordered by, "" when unknown); returns it committed."""
        with self._transaction() as cur:
            rows = {d.id: d for d in _read(cur)}
            target = rows.get(int(decision_id))
            if target is None:
                raise ValueError(f"no decision with id {decision_id}")
            if target.action == "undo":
                raise ValueError(f"decision {decision_id} is an undo; undoes cannot be undone")
            if any(d.undoes == target.id for d in rows.values()):
                raise ValueError(f"decision {decision_id} is already undone")
            return self._insert(cur, target.index, "undo", None, annotator, model_version,
                                target.id, ranking)

    def _insert(self, cur: sqlite3.Cursor, index: int, action: str, label: int | None,
                annotator: str, model_version: int | None, undoes: int | None,
                ranking: str) -> Decision:
        head = int(cur.execute("SELECT COALESCE(MAX(id), 0) FROM decisions").fetchone()[0])
        version = head if model_version is None else int(model_version)
        ts = datetime.now(UTC).isoformat(timespec="microseconds")
        cur.execute(
            "INSERT INTO decisions (idx, action, label, annotator, ts, model_version, undoes, "
            "ranking) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (index, action, label, str(annotator), ts, version, undoes, str(ranking)),
        )
        return Decision(int(cur.lastrowid), index, action, label, str(annotator), ts, version,
                        undoes, str(ranking))

    # -- export ----------------------------------------------------------------------------
    def export_csv(self, path: str | Path, original_labels: Sequence[int] | None = None) -> Path:
        """The cleaned label file: index, original_label, final_label, removed, decided_by,
        decided_at, ranking, one row per training example (decided_* and ranking from the last
        active decision on it, keep included). `original_labels` defaults to the labels the
        model was trained on. Written to a temporary file, fsynced, then renamed: never
        half-written."""
        decisions = self.decisions()
        final = edits(decisions, self.labels)
        last = {d.index: d for d in active_decisions(decisions)}
        original = self.labels if original_labels is None else list(original_labels)
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["index", "original_label", "final_label", "removed", "decided_by",
                          "decided_at", "ranking"])
            for i, y in enumerate(self.labels):
                state = final.get(i, y)
                d = last.get(i)
                out.writerow([i, int(original[i]), y if state is REMOVED else state,
                              int(state is REMOVED), d.annotator if d else "", d.ts if d else "",
                              d.ranking if d else ""])
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        return path


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) under the handle's thread lock. A write
    SQLite refuses (a full disk, a read-only file, a lock held past the busy timeout) is a
    DecisionLogError naming it, after the rollback: nothing of the transaction is kept."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock, path: Path) -> None:
        self.db, self.lock, self.path = db, lock, path

    def __enter__(self) -> sqlite3.Cursor:
        self.lock.acquire()
        try:
            self.cur = self.db.cursor()
            self.cur.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            self.lock.release()
            if isinstance(exc, sqlite3.Error):  # e.g. locked past the busy timeout
                raise DecisionLogError(f"cannot write the decision log {self.path}: {exc}; "
                                       "nothing recorded") from exc
            raise
        return self.cur

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        try:
            if exc_type is None:
                try:
                    self.cur.execute("COMMIT")
                    return
                except sqlite3.Error as failed:
                    exc = failed
            if self.db.in_transaction:  # SQLite rolls back by itself on some errors (FULL)
                self.cur.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise DecisionLogError(f"cannot write the decision log {self.path}: {exc}; "
                                       "nothing recorded") from exc
        finally:
            self.lock.release()


def _read(db: sqlite3.Connection | sqlite3.Cursor) -> list[Decision]:
    rows = db.execute("SELECT id, idx, action, label, annotator, ts, model_version, undoes, "
                      "ranking FROM decisions ORDER BY id").fetchall()
    return [Decision(*row) for row in rows]


def _add_ranking_column(cur: sqlite3.Cursor) -> None:
    """Bring a log created before the ranking column to the current schema (inside the opening
    transaction, so two processes opening it at once add it once); its rows read as ""."""
    columns = {row[1] for row in cur.execute("PRAGMA table_info(decisions)")}
    if "ranking" not in columns:
        cur.execute("ALTER TABLE decisions ADD COLUMN ranking TEXT NOT NULL DEFAULT ''")
