"""The app turns bad inputs into messages, not tracebacks: a decision-log file that is not a log
(Review, Explore), a one-class image folder (Review), a damping in the link that is no damping,
an upload that is not a usable image (Explore)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from influence_core import decision_log_path, load_problem, recipe

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
RUN_TIMEOUT_S = 300  # the first run trains digits/mlp and precomputes its index
FAST = {"ranking": "self_influence"}  # the index's own ranking: no extra trainings at setup


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One artifacts folder for the module: the first test trains digits/mlp, the rest reuse it."""
    with pytest.MonkeyPatch.context() as mp:
        home = tmp_path_factory.mktemp("home")
        mp.setenv("INFLUENCE_AUDIT_HOME", str(home))
        yield home


@pytest.fixture
def home(shared_home: Path) -> Iterator[Path]:
    st.cache_resource.clear()
    st.cache_data.clear()
    yield shared_home
    st.cache_resource.clear()
    st.cache_data.clear()


def _page(name: str, **query: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT_S)
    at.query_params.update(query)
    at.switch_page(f"views/{name}.py")
    return at.run()


def test_a_log_that_is_not_a_log_is_an_error_on_review_and_explore(home: Path) -> None:
    log = decision_log_path(load_problem(recipe("digits", "mlp")))
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"my notes, not a database\n" * 100)
    try:
        for name in ("review", "explore"):
            at = _page(name, **FAST)
            assert not at.exception, at.exception
            assert at.error and "not a decision log" in at.error[0].value
            assert "move it aside" in at.error[0].value
        assert log.read_bytes() == b"my notes, not a database\n" * 100
    finally:
        log.unlink()  # the module's later tests use this problem


def test_a_one_class_image_folder_is_a_message_on_review(home: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFLUENCE_AUDIT_ALLOWED_ROOTS", str(tmp_path))  # the server's option
    rng = np.random.default_rng(0)
    (tmp_path / "photos" / "cats").mkdir(parents=True)
    for i in range(10):
        pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "photos" / "cats" / f"{i}.png")
    at = _page("review", dataset="imagefolder", folder=str(tmp_path / "photos"), **FAST)
    assert not at.exception, at.exception
    assert at.error and "single class (cats)" in at.error[0].value


def test_a_damping_in_the_link_that_is_no_damping_is_a_warning(home: Path) -> None:
    at = _page("dataset", damping="nan")
    assert not at.exception
    assert any("Ignored damping=nan" in w.value for w in at.warning)


@pytest.mark.parametrize("name, data, message", [
    ("notes.png", b"just some text\n" * 20, "is not an image"),
    ("empty.png", b"", "is empty"),
])
def test_an_upload_that_is_no_usable_image_is_an_error_on_explore(home: Path, name: str,
                                                                   data: bytes,
                                                                   message: str) -> None:
    at = _page("explore", **FAST)
    assert not at.exception, at.exception
    at.file_uploader(key="upload").upload(name, data, "image/png").run()
    assert not at.exception, at.exception
    assert at.error and at.error[0].value.startswith(f"Cannot use {name}")
    assert message in at.error[0].value
