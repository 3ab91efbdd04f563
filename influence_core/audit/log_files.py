"""Decision-log files as files: recognising one (check_log_file refuses anything else with a
way to recover, and never replaces it), switching one to WAL while other handles open it too
(use_wal), and copying one safely while it is in use (backup_log)."""

from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path

BUSY_TIMEOUT_S = 30.0  # how long a reader waits for a writer's lock


class DecisionLogError(ValueError):
    """A file that is not a decision log (not SQLite, or another program's schema), or a log
    SQLite cannot write (a full disk, a read-only file)."""


LOG_COLUMNS = {"id", "idx", "action", "label", "annotator", "ts", "model_version", "undoes"}


def check_log_file(db: sqlite3.Connection, path: Path) -> None:
    """Raise DecisionLogError, changing nothing, unless `db` is a decision log or an empty
    database (a new log): the message says how to recover. A log is never replaced."""
    recover = (f"nothing was changed; move it aside (e.g. `mv {path} {path}.bak`) to start a "
               "new log there, or choose another log path")
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        columns = {r[1] for r in db.execute("PRAGMA table_info(decisions)")}
    except sqlite3.DatabaseError as exc:
        raise DecisionLogError(f"{path} is not a decision log ({exc}): {recover}") from None
    tables.discard("sqlite_sequence")
    if tables and not ({"decisions", "meta"} <= tables and columns >= LOG_COLUMNS):
        raise DecisionLogError(f"{path} is a SQLite database of another kind (tables: "
                               f"{', '.join(sorted(tables))}), not a decision log: {recover}")


def use_wal(db: sqlite3.Connection) -> None:
    """Put the log in WAL mode. Switching a log out of rollback mode needs its exclusive lock,
    and SQLite answers "database is locked" at once, without waiting out the busy timeout, when
    two handles opening it together both ask (each holds the shared lock the other waits on).
    So a locked answer is retried, with a short random pause, for up to BUSY_TIMEOUT_S."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))


def backup_log(path: str | Path, to: str | Path) -> int:
    """Copy the decision log at `path` to `to` with SQLite's online backup API: a consistent
    snapshot, decisions still in the -wal file included, while other processes keep writing.
    Written beside `to` and renamed, so `to` is never half a copy. Returns the decisions
    copied. Raises DecisionLogError when `path` is not a decision log, FileNotFoundError when
    it does not exist."""
    path, to = Path(path), Path(to)
    if not path.is_file():
        raise FileNotFoundError(f"decision log {path} does not exist")
    if to.resolve() == path.resolve():
        raise ValueError(f"the backup must go to another file than {path}")
    src = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    tmp = to.with_name(to.name + ".tmp")
    try:
        check_log_file(src, path)
        to.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        with sqlite3.connect(tmp) as dest:
            src.backup(dest)
            count = int(dest.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])
        dest.close()
    finally:
        src.close()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    tmp.replace(to)
    return count
