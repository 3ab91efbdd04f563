"""A batch of decisions is all or nothing, and re-running it changes nothing: in the log
(DecisionLog.apply), the CLI (`unlearn --remove 1,2,99999`) and the app's bulk mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from influence_core.audit.store import REMOVED, DecisionLog
from influence_core.cli import main

LABELS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 5  # N = 50
CLASSES = 10
CLI = ["unlearn", "--epochs", "2", "--method", "kfac"]  # a quick digits/mlp


@pytest.fixture
def log(tmp_path: Path) -> DecisionLog:
    handle = DecisionLog(tmp_path / "decisions.db", LABELS, CLASSES)
    yield handle
    handle.close()


@pytest.mark.parametrize("bad, message", [
    (("remove", 99999, None), "index 99999 is outside the training set"),
    (("relabel", 3, 10), "label 10 is outside 0..9"),
    (("relabel", 1, 5), "index 1: two different decisions in one batch (remove and relabel"),
    (("undo", 77, None), "no decision with id 77"),
])
def test_a_batch_with_one_bad_request_records_nothing(log: DecisionLog, bad, message) -> None:
    with pytest.raises(ValueError, match=r"nothing recorded") as refused:
        log.apply([("remove", 1, None), ("remove", 2, None), bad], "ann")
    assert message in str(refused.value)
    assert log.decisions() == []


def test_rerunning_a_batch_is_a_no_op_that_says_what_is_already_in_force(log: DecisionLog
                                                                         ) -> None:
    batch = [("remove", 1, None), ("relabel", 3, 7), ("keep", 4, None), ("remove", 1, None)]
    done, notes = log.apply(batch, "ann")
    assert [(d.action, d.index) for d in done] == [("remove", 1), ("relabel", 3), ("keep", 4)]
    assert notes == [] and len({d.model_version for d in done}) == 1
    again, notes = log.apply(batch, "ann")
    assert again == [] and len(log.decisions()) == 3
    assert notes == ["index 1 already removed", "index 3 already has label 7",
                     "index 4 already kept"]
    undo, _ = log.apply([("undo", done[0].id, None)], "ann")
    assert log.apply([("undo", done[0].id, None)], "ann") == (
        [], [f"decision {done[0].id} already undone"])
    assert undo[0].undoes == done[0].id and log.edits() == {3: 7}


def test_a_decision_on_a_removed_point_refuses_the_whole_batch(log: DecisionLog) -> None:
    log.apply([("remove", 1, None)], "ann")
    with pytest.raises(ValueError, match="index 1 is removed: undo the removal first"):
        log.apply([("keep", 2, None), ("relabel", 1, 4)], "ann")
    assert log.edits() == {1: REMOVED} and len(log.decisions()) == 1


def test_a_check_that_refuses_the_edits_records_nothing(log: DecisionLog) -> None:
    seen = []

    def refuse(edits: dict) -> None:
        seen.append(edits)
        raise ValueError("not finite")

    with pytest.raises(ValueError, match="not finite"):
        log.apply([("remove", 1, None), ("relabel", 2, 9)], "ann", check=refuse)
    assert seen == [{1: REMOVED, 2: 9}] and log.decisions() == []


def test_unlearn_validates_the_whole_batch_and_a_retry_is_idempotent(
        artifacts_home, tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "cli.db")
    assert main([*CLI, "--log", db, "--remove", "1,2,99999"]) == 2
    err = capsys.readouterr().err
    assert "index 99999 is outside the training set" in err and "Traceback" not in err
    assert main([*CLI, "--log", db, "--remove", "1,2"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["recorded"] == [1, 2] and first["removed"] == 2
    assert main([*CLI, "--log", db, "--remove", "1,2"]) == 0
    out = capsys.readouterr()
    again = json.loads(out.out)
    assert again["recorded"] == [] and again["removed"] == 2
    assert again["unchanged"] == ["index 1 already removed", "index 2 already removed"]
    assert "already removed" in out.err


def test_the_apps_bulk_mode_is_all_or_nothing_and_idempotent(artifacts_home: Path,
                                                             tmp_path: Path) -> None:
    from influence_core import load_problem, open_session, recipe, record_many

    session = open_session(load_problem(recipe("digits", "mlp", epochs=2)), "kfac",
                           tmp_path / "app.db")
    log = session.log
    done, messages = record_many(session, [1, 2, 99999], "remove", [None] * 3, "ann", 0)
    assert done == [] and "index 99999 is outside the training set" in messages[0]
    assert log.decisions() == []
    done, messages = record_many(session, [1, 2], "remove", [None] * 2, "ann", 0)
    assert [d.index for d in done] == [1, 2] and messages == []
    again = record_many(session, [1, 2], "remove", [None] * 2, "ann", log.version())
    assert again == ([], ["index 1 already removed", "index 2 already removed"])
    assert len(log.decisions()) == 2
    log.close()
