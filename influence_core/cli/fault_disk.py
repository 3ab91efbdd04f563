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


def full_precompute(s: Scratch) -> dict:
    """safetensors fails as a full disk makes it (SafetensorError, after a torn start) while
    precompute saves the factors: the folder left behind must not be used."""
    from safetensors import SafetensorError

    from .. import artifacts
    from ..artifacts import ArtifactError, read_manifest
    from ..attribution.index import load_index

    def torn(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        Path(filename).write_bytes(b"\x08\x00")
        raise SafetensorError("Error while serializing: IoError(No space left on device)")

    real, artifacts.save_file = artifacts.save_file, torn
    known = set((s.home / "index").glob("*")) if (s.home / "index").exists() else set()
    try:
        outcome = run_cli(["precompute", *QUICK, "--seed", "8"])
    finally:
        artifacts.save_file = real
    new = [f for f in (s.home / "index").glob("*") if f not in known]
    used, _ = run_core(lambda: [load_index(f, s.quick_problem().model) for f in new])
    lost = any(read_manifest(f).get("complete") or list(f.rglob("*.tmp")) for f in new)
    return row(s, "full disk during precompute",
               "safetensors fails with an I/O error after a torn start (simulated)",
               "CLI precompute", "exit 2", outcome, lost or used.got != ArtifactError.__name__,
               "the folder left is marked incomplete, holds no .tmp, and load_index refuses it")
