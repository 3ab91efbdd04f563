"""Decision-log files: one rule names a model's log (the CLI and the app agree), a file that is
not a log is refused with a way out and never replaced, and `backup` copies a log in use."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from influence_core import decision_log_path, load_problem, open_audit, open_index, recipe
from influence_core.audit.store import DecisionLog, DecisionLogError
from influence_core.cli import main

LABELS = [0, 1, 2, 3] * 5  # N = 20
CLASSES = 4
QUICK = ["--epochs", "2"]  # a digits/mlp trained in about a second


def test_cli_and_app_keep_a_user_checkpoints_decisions_in_one_log(
        artifacts_home: Path, tmp_path: Path, capsys) -> None:
    assert main(["train", *QUICK]) == 0
    [trained] = artifacts_home.glob("models/digits-mlp-*/model.pt")
    mine = tmp_path / "my.pt"
    shutil.copy(trained, mine)
    capsys.readouterr()
    assert main(["unlearn", *QUICK, "--checkpoint", str(mine), "--method", "kfac",
                 "--remove", "5"]) == 0
    cli_log = Path(json.loads(capsys.readouterr().out)["log"])
    problem = load_problem(recipe("digits", "mlp", epochs=2), checkpoint=mine)
    session = open_audit(problem, open_index(problem), "kfac", queue_size=20)
    assert session.log.path == cli_log == decision_log_path(problem)
    assert cli_log != decision_log_path(load_problem(recipe("digits", "mlp", epochs=2)))
    assert [(d.index, d.action) for d in session.log.decisions()] == [(5, "remove")]
    session.log.close()


@pytest.mark.parametrize("content, message", [
    (b"these are my notes, not a database" * 40, "is not a decision log"),
    ("foreign", r"SQLite database of another kind \(tables: photos\)"),
])
def test_a_file_that_is_not_a_log_is_refused_and_left_untouched(tmp_path: Path, content,
                                                                 message: str) -> None:
    path = tmp_path / "decisions.db"
    if content == "foreign":
        with sqlite3.connect(path) as con:
            con.execute("CREATE TABLE photos (name TEXT)")
            con.execute("INSERT INTO photos VALUES ('cat.jpg')")
        con.close()
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    with pytest.raises(DecisionLogError, match=message) as refused:
        DecisionLog(path, LABELS, CLASSES)
    assert f"mv {path} {path}.bak" in str(refused.value) and "nothing was changed" in str(
        refused.value)
    assert path.read_bytes() == before and not Path(f"{path}-wal").exists()


def test_a_log_of_another_training_set_is_a_decision_log_error(tmp_path: Path) -> None:
    DecisionLog(tmp_path / "d.db", LABELS, CLASSES).close()
    with pytest.raises(DecisionLogError, match=r"another training set.*move it aside"):
        DecisionLog(tmp_path / "d.db", LABELS[::-1], CLASSES)  # the app shows it as a message


def test_unlearn_on_a_foreign_log_is_a_message_with_the_way_out(artifacts_home: Path,
                                                                tmp_path: Path, capsys) -> None:
    path = tmp_path / "decisions.db"
    path.write_bytes(b"\x00garbage" * 100)
    assert main(["unlearn", *QUICK, "--method", "kfac", "--log", str(path), "--keep", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "move it aside" in err and str(path) in err


def test_backup_holds_the_decisions_still_in_the_wal_file(tmp_path: Path, capsys) -> None:
    path, copy = tmp_path / "live.db", tmp_path / "backup" / "copy.db"
    log = DecisionLog(path, LABELS, CLASSES)
    log._db.execute("PRAGMA wal_autocheckpoint=0")  # keep every commit in the -wal file
    log.apply([("remove", 1, None), ("relabel", 2, 3), ("keep", 4, None)], "ann")
    assert Path(f"{path}-wal").stat().st_size > 0
    plain = tmp_path / "plain-copy.db"  # what copying the main file alone would keep
    shutil.copy(path, plain)
    with closing(sqlite3.connect(plain)) as con:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master")}
        assert "decisions" not in tables or not con.execute(
            "SELECT COUNT(*) FROM decisions").fetchone()[0]
    assert main(["backup", "--log", str(path), "--to", str(copy)]) == 0  # the log stays open
    assert "backed up 3 decisions" in capsys.readouterr().out
    restored = DecisionLog(copy, LABELS, CLASSES)
    assert restored.decisions() == log.decisions() and restored.edits() == {1: None, 2: 3}
    restored.close()
    log.close()


def test_backup_refuses_what_is_not_a_log(tmp_path: Path, capsys) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite" * 200)
    assert main(["backup", "--log", str(junk), "--to", str(tmp_path / "c.db")]) == 2
    assert "not a decision log" in capsys.readouterr().err
    assert not (tmp_path / "c.db").exists()
    assert main(["backup", "--log", str(tmp_path / "none.db"), "--to", str(junk)]) == 2
    assert "does not exist" in capsys.readouterr().err
