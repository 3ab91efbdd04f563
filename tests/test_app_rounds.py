"""Review's "Retrain on reviewed labels" through AppTest: the next round opens, the log stays."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
RUN_TIMEOUT_S = 300  # trains digits/mlp, precomputes two indices: seconds alone, minutes if busy


@pytest.fixture
def review(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from influence_core import default_data_root

    monkeypatch.setenv("INFLUENCE_AUDIT_HOME", str(tmp_path / "home"))
    roots = (Path.cwd(), default_data_root(), tmp_path)
    monkeypatch.setenv("INFLUENCE_AUDIT_ALLOWED_ROOTS", os.pathsep.join(map(str, roots)))
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT_S)
    at.query_params.update({"annotator": "ann"})  # the default ranking
    at.switch_page("views/review.py")
    yield at.run()
    st.cache_resource.clear()
    st.cache_data.clear()


def _rows(home: Path) -> list[tuple]:
    [db] = home.glob("decisions/*.db")
    with sqlite3.connect(db) as con:
        return con.execute("SELECT * FROM decisions ORDER BY id").fetchall()


def _suspect(at: AppTest) -> int:
    [m] = [m for m in (re.search(r"Suspect #(\d+)", md.value) for md in at.markdown) if m]
    return int(m.group(1))


def _progress(at: AppTest) -> str:
    return at.get("progress")[0].proto.text


def test_retrain_opens_round_two_without_the_reviewed_and_keeps_the_log(review: AppTest,
                                                                        tmp_path: Path) -> None:
    at = review
    assert not at.exception and "round 1" in _progress(at)
    assert at.button(key="retrain").disabled  # nothing reviewed yet
    decided = []
    for action in ("act_keep", "act_remove"):
        decided.append(_suspect(at))
        at = at.button(key=action).click().run()
        assert not at.exception
    before = _rows(tmp_path / "home")
    at = at.button(key="retrain").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "round 2" in _progress(at) and at.button(key="retrain").disabled  # nothing new
    assert _rows(tmp_path / "home") == before  # the retrain only read the log
    assert _suspect(at) not in decided
    [folder] = (tmp_path / "home").glob("models/*/rounds/*/2")
    assert (folder / "meta.json").is_file() and (folder / "model.pt").is_file()
    third = _suspect(at)  # a round-2 decision goes to the same log, on the round-2 model
    at = at.button(key="act_remove").click().run()
    assert not at.exception and "round 2" in _progress(at)
    rows = _rows(tmp_path / "home")
    assert rows[:len(before)] == before and rows[-1][1:3] == (third, "remove")
    assert not at.button(key="retrain").disabled  # a round-2 decision: round 3 can be trained
    st.cache_resource.clear()  # a restart: nothing in memory, the round is read from disk
    st.cache_data.clear()
    again = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT_S)
    again.query_params.update({"annotator": "ann"})  # the default ranking
    again.switch_page("views/review.py")
    again = again.run()
    assert not again.exception and "round 2" in _progress(again)
    assert _suspect(again) not in [*decided, third]


def _removal_preview(at: AppTest) -> str:
    [text] = [c.value for c in at.caption if c.value.startswith("**Remove**")]
    return text


def _removal_damping(at: AppTest) -> str:
    return re.search(r"remove: (lambda = \S+|Newton step skipped)", _step_caption(at)).group(1)


def _step_caption(at: AppTest) -> str:
    [text] = [c.value for c in at.caption if c.value.startswith("Newton step between retrains")]
    return text


def test_calibrate_measures_the_step_on_this_model_and_the_step_follows_it(
    review: AppTest, tmp_path: Path,
) -> None:
    at = review
    assert not at.exception and "not calibrated" in _step_caption(at)
    other = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT_S)  # another ranking's session
    other.query_params.update({"annotator": "ann"})
    other.switch_page("views/review.py")
    other = other.run().selectbox(key="ranking").select("self_influence").run()
    assert other.selectbox(key="ranking").value != at.selectbox(key="ranking").value
    assert not other.exception and "not calibrated" in _step_caption(other)
    at = at.button(key="act_remove").click().run()  # a state stepped under the default damping
    assert not at.exception and not at.button(key="calibrate").disabled
    before, suspect, removal = _rows(tmp_path / "home"), _suspect(at), _removal_preview(at)
    damped = _removal_damping(at)
    at = at.button(key="calibrate").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert _suspect(at) == suspect and _removal_damping(at) != damped  # same card, re-damped:
    assert _removal_preview(at) != removal  # its preview is not served from a stale cache
    assert "calibrated: the step gets" in _step_caption(at) or "Newton step skipped" in (
        _step_caption(at))
    assert "not calibrated" not in _step_caption(at)
    assert at.button(key="calibrate").disabled  # done for this model
    assert [p.name for p in (tmp_path / "home" / "calibration").glob("*.json")] != []
    assert _rows(tmp_path / "home") == before  # the log is only read
    other = other.run()  # the session opened before the calibration adopts it
    assert not other.exception and _step_caption(other) == _step_caption(at)
    assert other.button(key="calibrate").disabled
