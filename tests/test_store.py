"""The decision log: semantics, refusal of bad input, durability under SIGKILL, concurrency."""

from __future__ import annotations

import csv
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from influence_core.audit.log_files import use_wal
from influence_core.audit.store import REMOVED, DecisionLog

LABELS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 5  # N = 50
CLASSES = 10
REPO = Path(__file__).resolve().parents[1]
KILL_AFTER = 25  # decisions reported committed before the writer is killed
WRITES_PER_WRITER = 40


@pytest.fixture
def log(tmp_path: Path) -> DecisionLog:
    handle = DecisionLog(tmp_path / "decisions.db", LABELS, CLASSES)
    yield handle
    handle.close()


def test_edits_replay_active_decisions_last_one_wins(log: DecisionLog) -> None:
    a = log.record(3, "relabel", 5, annotator="ann")
    b = log.record(3, "relabel", 6, annotator="ann")
    log.record(4, "remove", annotator="bob")
    log.record(7, "keep", annotator="bob")
    assert log.edits() == {3: 6, 4: REMOVED}
    assert log.version() == 4
    log.undo(b.id, annotator="ann")
    assert log.edits() == {3: 5, 4: REMOVED}
    log.undo(a.id)
    assert log.edits() == {4: REMOVED}
    actions = [d.action for d in log.decisions()]
    assert actions == ["relabel"] * 2 + ["remove", "keep"] + ["undo"] * 2
    assert [d.id for d in log.active_decisions()] == [3, 4]
    c = log.record(5, "relabel", 1)
    log.record(5, "relabel", LABELS[5])  # back to the base label: no edit left
    assert 5 not in log.edits() and c.model_version == 6


def test_model_version_is_recorded_and_defaults_to_head(log: DecisionLog) -> None:
    assert log.version() == 0
    first = log.record(1, "remove")
    assert first.model_version == 0
    second = log.record(2, "remove", model_version=0)  # made while looking at the base model
    assert second.model_version == 0 and log.record(3, "keep").model_version == 2


@pytest.mark.parametrize("call, message", [
    (lambda lg: lg.record(50, "remove"), "outside the training set"),
    (lambda lg: lg.record(-1, "remove"), "outside the training set"),
    (lambda lg: lg.record(1, "relabel", 10), "outside 0..9"),
    (lambda lg: lg.record(1, "relabel", -1), "outside 0..9"),
    (lambda lg: lg.record(1, "relabel", None), "outside 0..9"),
    (lambda lg: lg.record(1, "relabel", LABELS[1]), "already has label"),
    (lambda lg: lg.record(1, "remove", 3), "takes no label"),
    (lambda lg: lg.record(1, "delete"), "action must be"),
    (lambda lg: lg.record(9, "relabel", 1), "is removed"),
    (lambda lg: lg.record(9, "remove"), "is removed"),
    (lambda lg: lg.undo(99), "no decision"),
    (lambda lg: lg.undo(3), "undoes cannot be undone"),
    (lambda lg: lg.undo(2), "already undone"),
])
def test_bad_input_is_refused_and_writes_nothing(log: DecisionLog, call, message: str) -> None:
    log.record(9, "remove")  # id 1
    log.undo(log.record(4, "keep").id)  # id 2 (keep), id 3 (its undo)
    rows = log.decisions()
    with pytest.raises(ValueError, match=message):
        call(log)
    assert log.decisions() == rows


def test_each_decision_keeps_the_ranking_it_was_made_under(log: DecisionLog,
                                                           tmp_path: Path) -> None:
    made = [log.record(2, "relabel", 7, annotator="ann", ranking="loss"),
            log.record(5, "remove", ranking="cleanlab"),
            log.record(6, "keep")]
    made.append(log.undo(made[1].id, ranking="self_influence"))
    assert [d.ranking for d in made] == ["loss", "cleanlab", "", "self_influence"]
    other = DecisionLog(log.path, LABELS, CLASSES)  # read back through another connection
    assert other.decisions() == made
    other.close()
    with open(log.export_csv(tmp_path / "labels.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [rows[i]["ranking"] for i in (2, 5, 6, 0)] == ["loss", "", "", ""]


OLD_SCHEMA = """
CREATE TABLE decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    idx INTEGER NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('relabel', 'remove', 'keep', 'undo')),
    label INTEGER,
    annotator TEXT NOT NULL,
    ts TEXT NOT NULL,
    model_version INTEGER NOT NULL,
    undoes INTEGER REFERENCES decisions(id)
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""  # the decision log's schema before the ranking column


def _old_log(path: Path) -> None:
    """A log file as the code before the ranking column wrote it: meta and one relabel."""
    digest = hashlib.sha256(",".join(map(str, LABELS)).encode()).hexdigest()[:16]
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
        db.executemany("INSERT INTO meta VALUES (?, ?)", [
            ("labels_sha256", digest), ("num_classes", str(CLASSES)),
            ("num_train", str(len(LABELS)))])
        db.execute("INSERT INTO decisions (idx, action, label, annotator, ts, model_version, "
                   "undoes) VALUES (3, 'relabel', 8, 'ann', '2025-01-01T00:00:00+00:00', 0, NULL)")
    db.close()


def test_a_log_from_before_the_ranking_column_opens_and_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _old_log(path)
    log = DecisionLog(path, LABELS, CLASSES)
    [old] = log.decisions()
    assert (old.index, old.action, old.label, old.annotator, old.ranking) == (
        3, "relabel", 8, "ann", "")
    new = log.record(4, "remove", annotator="bob", ranking="loss")
    assert log.edits() == {3: 8, 4: REMOVED}
    log.close()
    again = DecisionLog(path, LABELS, CLASSES)
    assert [d.ranking for d in again.decisions()] == ["", "loss"] and again.decisions()[1] == new
    again.close()


def test_opening_an_old_log_from_several_threads_adds_the_column_once(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _old_log(path)
    handles: list[DecisionLog] = []
    errors: list[Exception] = []

    def open_log() -> None:
        try:
            handles.append(DecisionLog(path, LABELS, CLASSES))
        except Exception as exc:  # e.g. "duplicate column name" if two added it
            errors.append(exc)

    threads = [threading.Thread(target=open_log) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(handles) == 4
    assert all(h.decisions()[0].ranking == "" for h in handles)
    for h in handles:
        h.close()


def test_log_of_another_training_set_is_refused(tmp_path: Path) -> None:
    DecisionLog(tmp_path / "d.db", LABELS, CLASSES).close()
    with pytest.raises(ValueError, match="another training set"):
        DecisionLog(tmp_path / "d.db", LABELS[::-1], CLASSES)


def test_export_csv(log: DecisionLog, tmp_path: Path) -> None:
    log.record(2, "relabel", 7, annotator="ann")
    log.record(5, "remove", annotator="bob")
    log.record(6, "keep", annotator="cy")
    with open(log.export_csv(tmp_path / "labels.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(LABELS)
    assert rows[2]["original_label"] == "2" and rows[2]["final_label"] == "7"
    assert rows[2]["decided_by"] == "ann" and rows[2]["removed"] == "0"
    assert rows[5]["removed"] == "1" and rows[5]["decided_by"] == "bob"
    assert rows[6]["final_label"] == "6" and rows[6]["decided_by"] == "cy" and rows[6]["decided_at"]
    assert rows[0]["decided_by"] == "" and rows[0]["final_label"] == "0"


_WRITER = textwrap.dedent("""
    import sys
    from influence_core.audit.store import DecisionLog
    labels = [int(v) for v in sys.argv[2].split(",")]
    log = DecisionLog(sys.argv[1], labels, 10)
    start, count = int(sys.argv[3]), int(sys.argv[4])
    for k in range(count):
        index = (start + k) % len(labels)
        d = log.record(index, "keep", annotator=f"writer{start}")
        print(d.id, flush=True)  # reported only after COMMIT returned
""")


def _writer(path: Path, start: int, count: int) -> subprocess.Popen:
    labels = ",".join(map(str, LABELS))
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(path), labels, str(start),
                             str(count)], stdout=subprocess.PIPE, text=True, cwd=REPO)


def test_sigkill_mid_session_loses_no_committed_decision(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    proc = _writer(path, 0, 100_000)
    reported = [int(proc.stdout.readline()) for _ in range(KILL_AFTER)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reported += [int(line) for line in proc.stdout.read().split()]  # already in the pipe
    log = DecisionLog(path, LABELS, CLASSES)
    ids = {d.id for d in log.decisions()}
    assert set(reported) <= ids, f"lost committed decisions {set(reported) - ids}"
    assert log.record(0, "keep").id == max(ids) + 1  # the log is intact and writable
    log.close()


def test_two_processes_writing_concurrently_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    DecisionLog(path, LABELS, CLASSES).close()
    procs = [_writer(path, start, WRITES_PER_WRITER) for start in (0, 25)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    reported = [int(x) for out in outputs for x in out.split()]
    log = DecisionLog(path, LABELS, CLASSES)
    rows = log.decisions()
    assert len(rows) == 2 * WRITES_PER_WRITER and sorted(reported) == [d.id for d in rows]
    log.close()


def test_two_handles_in_threads_lose_nothing(tmp_path: Path) -> None:
    handles = [DecisionLog(tmp_path / "d.db", LABELS, CLASSES) for _ in range(2)]
    errors: list[Exception] = []

    def write(h: DecisionLog, offset: int) -> None:
        try:
            for k in range(WRITES_PER_WRITER):
                h.record((offset + k) % len(LABELS), "keep", annotator=str(offset))
        except Exception as exc:  # any failure of a writer thread is the test's to report
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(h, 10 * i)) for i, h in enumerate(handles)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(handles[0].decisions()) == 2 * WRITES_PER_WRITER
    for h in handles:
        h.close()


def test_concurrent_removals_of_one_point_cannot_both_succeed(tmp_path: Path) -> None:
    a, b = (DecisionLog(tmp_path / "d.db", LABELS, CLASSES) for _ in range(2))
    a.record(8, "remove")
    with pytest.raises(ValueError, match="is removed"):
        b.record(8, "remove")  # b validates against the committed log, not a stale copy
    assert len(b.decisions()) == 1
    a.close(), b.close()


class _BusyThenFine:
    """A connection whose first `busy` journal-mode switches answer SQLITE_BUSY at once, as
    SQLite does when two handles opening a rollback-mode log both ask for its exclusive lock."""

    def __init__(self, busy: int, code: int = sqlite3.SQLITE_BUSY) -> None:
        self.busy, self.code, self.calls = busy, code, 0

    def execute(self, sql: str) -> None:
        self.calls += 1
        if self.calls <= self.busy:
            exc = sqlite3.OperationalError("database is locked")
            exc.sqlite_errorcode = self.code
            raise exc


def test_switching_to_wal_retries_a_busy_answer_and_nothing_else() -> None:
    db = _BusyThenFine(busy=3)
    use_wal(db)  # type: ignore[arg-type]
    assert db.calls == 4
    recovering = _BusyThenFine(busy=1, code=261)  # SQLITE_BUSY_RECOVERY, an extended busy code
    use_wal(recovering)  # type: ignore[arg-type]
    assert recovering.calls == 2
    readonly = _BusyThenFine(busy=1, code=8)  # SQLITE_READONLY is not waited out
    with pytest.raises(sqlite3.OperationalError):
        use_wal(readonly)  # type: ignore[arg-type]
    assert readonly.calls == 1
