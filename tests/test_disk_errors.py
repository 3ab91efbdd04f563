"""A full disk or a read-only artifacts folder is a one-line error, and nothing half-written is
left where a later run would use it. Root writes through 0o555, so as root the full disk is
simulated instead: torch.save writes the start of a file, then fails with ENOSPC."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from influence_core.cli import main

QUICK = ["--epochs", "2"]  # a digits/mlp trained in about a second


TORCH_WRITE_FAILED = "PytorchStreamWriter failed writing file data/0: file write failed"


def _torn_save(error: Exception) -> object:
    def save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        Path(f).write_bytes(b"PK\x03\x04 the first bytes of a zip")  # what a full disk leaves
        raise error
    return save


def _used_files(home: Path) -> list[Path]:
    """What train_or_load would read back: checkpoints, metadata, snapshots, temporaries."""
    return [p for p in home.rglob("*") if p.is_file() and p.name != ".keep"]


@pytest.mark.parametrize("error, expected", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), os.strerror(errno.ENOSPC)),
    (RuntimeError(TORCH_WRITE_FAILED), TORCH_WRITE_FAILED),  # how torch's writer says it
])
def test_a_full_disk_or_read_only_home_is_a_clear_error_and_leaves_nothing(
        artifacts_home: Path, monkeypatch: pytest.MonkeyPatch, capsys, error: Exception,
        expected: str) -> None:
    real_save = torch.save
    if os.geteuid() == 0:  # chmod does not stop root
        monkeypatch.setattr(torch, "save", _torn_save(error))
    else:
        artifacts_home.mkdir(parents=True)
        artifacts_home.chmod(0o555)
        expected = os.strerror(errno.EACCES)  # the same for both parameters
    assert main(["train", *QUICK]) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and line.startswith("error: cannot write") and expected in line
    assert not [p for p in _used_files(artifacts_home) if p.suffix in (".pt", ".json", ".tmp")]
    monkeypatch.setattr(torch, "save", real_save)
    artifacts_home.chmod(0o755)
    assert main(["train", *QUICK]) == 0  # the next run, with room, saves a whole checkpoint
    assert [p.name for p in artifacts_home.rglob("meta.json")] == ["meta.json"]
    assert not list(artifacts_home.rglob("*.tmp"))



def test_a_full_decision_log_refuses_the_click_and_keeps_every_decision(
        artifacts_home: Path, tmp_path: Path) -> None:
    """SQLite's own SQLITE_FULL, reached by capping the log's page count (the connection's
    PRAGMA max_page_count: the only way in is the handle's private connection)."""
    from influence_core import open_session, record_decision
    from influence_core.config import recipe
    from influence_core.data.registry import load_problem

    session = open_session(load_problem(recipe("digits", "mlp", epochs=2)), "kfac",
                           tmp_path / "log.db")
    db = session.log._db
    db.execute(f"PRAGMA max_page_count={db.execute('PRAGMA page_count').fetchone()[0]}")
    refused, k = None, 0
    while refused is None:  # fill the last page with decisions, then one more
        before = session.log.decisions()
        refused = record_decision(session, k, "keep", None, "x" * 500, session.log.version())
        k += 1
    assert "database or disk is full; nothing recorded" in refused
    assert session.log.decisions() == before and len(before) == k - 1
    db.execute("PRAGMA max_page_count=1000000")  # room again: the log works on
    assert record_decision(session, k, "keep", None, "ann", session.log.version()) is None
    session.log.close()


def test_a_failed_write_during_precompute_leaves_an_artifact_that_is_never_used(
        artifacts_home: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """safetensors reports a full disk as SafetensorError; the artifact folder it leaves is
    refused by load_index until a rerun completes it."""
    from safetensors import SafetensorError

    from influence_core import artifacts
    from influence_core.artifacts import ArtifactError, read_manifest
    from influence_core.attribution.index import load_index
    from influence_core.config import recipe
    from influence_core.data.registry import load_problem

    def full(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        Path(filename).write_bytes(b"\x08\x00")  # a torn start
        raise SafetensorError("Error while serializing: IoError(No space left on device)")

    real = artifacts.save_file
    monkeypatch.setattr(artifacts, "save_file", full)
    assert main(["precompute", *QUICK]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: cannot write or read") and "No space left" in line
    folder = next((artifacts_home / "index").iterdir())
    assert not list(folder.rglob("*.tmp")) and not read_manifest(folder).get("complete")
    model = load_problem(recipe("digits", "mlp", epochs=2)).model
    with pytest.raises(ArtifactError):
        load_index(folder, model)
    monkeypatch.setattr(artifacts, "save_file", real)
    assert main(["precompute", *QUICK]) == 0  # the rerun completes the same folder
    assert load_index(folder, model).vectors.shape[0] > 0
