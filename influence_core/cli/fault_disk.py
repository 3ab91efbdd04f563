"""The full-disk cases of `bench faults` (fault_cases.py lists them): a checkpoint whose write
fails, and a decision log SQLite cannot grow."""

from __future__ import annotations

from pathlib import Path

from .faults import QUICK, Outcome, Scratch, row, run_cli, run_core


def full_disk(s: Scratch) -> dict:
    """torch.save writes the start of a file, then fails as a full disk does (ENOSPC): the
    same failure a read-only folder gives a user who is not root."""
    import errno
    import os

    import torch

    from ..config import recipe
    from ..data.training import checkpoint_dir

    real = torch.save

    def torn(obj: object, f: object, *args: object, **kwargs: object) -> None:
        Path(f).write_bytes(b"PK\x03\x04")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    torch.save = torn
    try:
        outcome = run_cli(["train", *QUICK, "--seed", "7"])
    finally:
        torch.save = real
    folder = checkpoint_dir(recipe("digits", "mlp", epochs=2, seed=7))
    left = [p.name for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    return row(s, "full disk while saving a checkpoint",
               "torch.save writes 4 bytes, then fails with ENOSPC (simulated)", "CLI train",
               "exit 2", outcome, bool(left), "no model.pt, meta.json, snapshot or .tmp left")


def full_log(s: Scratch) -> dict:
    """A Review click on a log SQLite cannot grow: SQLITE_FULL itself, reached by capping the
    page count of the session's connection (PRAGMA max_page_count) at the log's size."""
    from ..app_tables import record_decision
    from ..audit.session import open_session

    session = open_session(s.quick_problem(), "kfac", s.home / "decisions" / "full.db")
    db = session.log._db  # the cap is per connection: set on the one the click writes with
    db.execute(f"PRAGMA max_page_count={db.execute('PRAGMA page_count').fetchone()[0]}")
    value, k = None, 0
    while value is None and k < 10_000:  # fill the last page, then one click more
        before = session.log.decisions()
        outcome, value = run_core(lambda k=k: record_decision(
            session, k % len(session.train), "keep", None, "x" * 500, session.log.version()))
        k += 1
    if isinstance(value, str):
        outcome = Outcome("refusal returned", value, False)
    lost = session.log.decisions() != before
    session.log.close()
    return row(s, "full decision log", f"SQLITE_FULL on the click after {k - 1} decisions",
               "app_tables record_decision (Review buttons)", "refusal returned", outcome, lost,
               "decision log rows before == after the refused click")
