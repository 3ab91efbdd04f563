"""The served app against crafted links: paths outside the allowed roots, estimators too costly
for the model, a bind beyond loopback without login, and the logged-in annotator's identity.
The rules (influence_core.serving) on their own, then through AppTest."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from influence_core import (
    PathNotAllowedError,
    TooCostlyError,
    allowed_roots,
    confine,
    default_data_root,
    exposure_refusal,
)
from influence_core.serving import EXACT_MAX_PARAMS, check_cost, is_loopback, max_params

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
RUN_TIMEOUT_S = 300  # the first run trains digits/mlp (seconds alone, minutes on a busy box)
DIGITS_MLP_PARAMS = 26_122  # tracked parameters of digits/mlp: above the exact limit
AUTH = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "test-secret",
        "client_id": "id", "client_secret": "secret",
        "server_metadata_url": "https://accounts.example.com/.well-known/openid-configuration"}


# ---- the rules -------------------------------------------------------------------------------
def test_confine_accepts_paths_under_a_root_and_refuses_the_rest(tmp_path: Path) -> None:
    root, outside = tmp_path / "allowed", tmp_path / "outside"
    (root / "images").mkdir(parents=True)
    outside.mkdir()
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "inner").symlink_to(root / "images", target_is_directory=True)
    roots = (root.resolve(),)
    assert confine(root / "images", roots=roots) == (root / "images").resolve()
    assert confine(root / "new" / "folder", roots=roots) == root / "new" / "folder"
    assert confine(root / "inner", roots=roots) == (root / "images").resolve()
    for crafted in (outside, root / "escape", root / "escape" / "x.pt", root / ".." / "outside",
                    "/etc/passwd", tmp_path / "allowed-sibling"):
        with pytest.raises(PathNotAllowedError, match="outside the folders"):
            confine(crafted, "The checkpoint", roots=roots)
    assert not (root / "new").exists(), "confine creates nothing"
    (root / "loop").symlink_to(root / "loop")
    for broken in (root / "loop", f"{root}/bad\x00name"):
        with pytest.raises(PathNotAllowedError):
            confine(broken, roots=roots)


def test_allowed_roots_default_and_the_option(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFLUENCE_AUDIT_ALLOWED_ROOTS", raising=False)
    assert allowed_roots() == (Path.cwd().resolve(), default_data_root())
    monkeypatch.setenv("INFLUENCE_AUDIT_ALLOWED_ROOTS", f"{tmp_path}{os.pathsep}{tmp_path}/b")
    assert allowed_roots() == (tmp_path.resolve(), tmp_path.resolve() / "b", default_data_root())
    with pytest.raises(PathNotAllowedError):
        confine(Path.cwd() / "README.md")


def test_costly_estimators_are_refused_above_their_stated_size() -> None:
    check_cost("exact", EXACT_MAX_PARAMS)
    check_cost("ekfac", 10**9)  # no limit: cost grows with layer widths
    with pytest.raises(TooCostlyError, match=r"limited to 5,000 parameters.*choose ekfac"):
        check_cost("exact", DIGITS_MLP_PARAMS)
    assert max_params("lissa", 1000) == 100_000 and max_params("lissa", 10) == 10_000_000
    check_cost("lissa", DIGITS_MLP_PARAMS, lissa_depth=1000)
    with pytest.raises(TooCostlyError, match="lissa estimator at depth 1000"):
        check_cost("lissa", 225_034, lissa_depth=1000)  # mnist/cnn


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("", False), (None, False), ("::", False),
    ("192.168.1.5", False), ("example.org", False),
])
def test_loopback_addresses(address: str | None, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_a_public_bind_needs_login_or_the_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFLUENCE_AUDIT_ALLOW_PUBLIC", raising=False)
    assert exposure_refusal("127.0.0.1", authenticated=False) is None
    assert "0.0.0.0" in exposure_refusal("0.0.0.0", authenticated=False)
    assert exposure_refusal("0.0.0.0", authenticated=True) is None
    monkeypatch.setenv("INFLUENCE_AUDIT_ALLOW_PUBLIC", "1")
    assert exposure_refusal("0.0.0.0", authenticated=False) is None


# ---- the app ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("influence_audit_home")


@pytest.fixture
def app(home: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., AppTest]]:
    """app(page, secrets=None, user=None, **query): one run of `page` (views/<page>.py). The
    server may read the working directory and tmp_path/allowed only."""
    monkeypatch.setenv("INFLUENCE_AUDIT_HOME", str(home))
    monkeypatch.setenv("INFLUENCE_AUDIT_ALLOWED_ROOTS",
                       f"{Path.cwd()}{os.pathsep}{tmp_path / 'allowed'}")
    monkeypatch.delenv("INFLUENCE_AUDIT_ALLOW_PUBLIC", raising=False)
    st.cache_resource.clear()
    st.cache_data.clear()

    def run(page: str = "dataset", secrets: dict | None = None, user: dict | None = None,
            **query: str) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT_S)
        at.query_params.update(query)
        if secrets:
            at.secrets.update(secrets)
        if user is not None:
            at.user = user
        at.switch_page(f"views/{page}.py")
        return at.run()

    yield run
    st.cache_resource.clear()
    st.cache_data.clear()


def refused(at: AppTest, words: str) -> bool:
    """The run stopped with an error message holding `words`: no traceback, no page drawn."""
    return (not at.exception and len(at.error) == 1 and words in at.error[0].value
            and not at.title and not at.get("image"))


def test_a_crafted_data_root_is_refused_and_nothing_is_created(
    app: Callable[..., AppTest], tmp_path: Path,
) -> None:
    target = tmp_path / "elsewhere" / "downloads"
    at = app(dataset="mnist", data_root=str(target))
    assert refused(at, "The data root"), [e.value for e in at.error]
    assert not (tmp_path / "elsewhere").exists()


def test_an_image_folder_outside_the_roots_is_neither_scanned_nor_listed(
    app: Callable[..., AppTest], tmp_path: Path, write_image: Callable[..., Path],
) -> None:
    for name in ("a", "b"):
        write_image(tmp_path / "private" / name / "0.png")
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "link").symlink_to(tmp_path / "private")
    for folder in (tmp_path / "private", tmp_path / "allowed" / "link", tmp_path / "allowed/.."):
        at = app(dataset="imagefolder", folder=str(folder))
        assert refused(at, "The image folder"), [e.value for e in at.error]
        assert not at.dataframe and "0.png" not in str(at.error[0].value)


def test_a_checkpoint_outside_the_roots_is_refused(app: Callable[..., AppTest]) -> None:
    at = app(checkpoint="/etc/passwd")
    assert refused(at, "The checkpoint /etc/passwd is outside")


def test_the_exact_estimator_is_refused_for_a_model_too_big_for_it(
    app: Callable[..., AppTest],
) -> None:
    at = app("review", method="exact")
    assert not at.exception
    assert len(at.error) == 1 and "choose ekfac" in at.error[0].value
    assert f"{DIGITS_MLP_PARAMS:,}" in at.error[0].value


@pytest.fixture
def public_bind() -> Iterator[None]:
    """The server option as `streamlit run --server.address 0.0.0.0` sets it."""
    before = st_config.get_option("server.address")
    st_config.set_option("server.address", "0.0.0.0")
    yield
    st_config.set_option("server.address", before)


def test_the_config_serves_on_loopback_only() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["server"]["maxUploadSize"] <= 5  # MB: an image, not a dataset
    demo = (root / "Makefile").read_text().split("\ndemo:")[1].split("\n\n")[0]
    assert "--server.address 127.0.0.1" in demo or "--server.address" not in demo


def test_a_public_bind_without_login_stops_with_a_message(
    app: Callable[..., AppTest], public_bind: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    at = app()
    assert refused(at, "listens on 0.0.0.0")
    assert "INFLUENCE_AUDIT_ALLOW_PUBLIC" in at.error[0].value
    assert refused(app(secrets={"auth": {"client_id": "id"}}), "no login is configured")
    monkeypatch.setenv("INFLUENCE_AUDIT_ALLOW_PUBLIC", "1")
    at = app()
    assert not at.exception and not at.error and at.title[0].value == "Dataset"


def test_with_login_configured_a_logged_out_user_sees_only_the_login(
    app: Callable[..., AppTest], public_bind: None,
) -> None:
    at = app(secrets={"auth": AUTH}, user={"is_logged_in": False})
    assert not at.exception and not at.error and not at.title
    assert [b.label for b in at.button] == ["Log in"]


def test_a_logged_in_annotator_is_recorded_by_identity_not_the_text_field(
    app: Callable[..., AppTest], home: Path, public_bind: None,
) -> None:
    user = {"is_logged_in": True, "email": "alice@example.com", "name": "Alice"}
    at = app("review", secrets={"auth": AUTH}, user=user, annotator="mallory")
    assert not at.exception and not at.error
    assert not [t for t in at.text_input if t.label == "Annotator"]
    at.button(key="act_keep").click().run()
    at.button(key="act_undo").click().run()
    assert not at.exception
    [db] = home.glob("decisions/*.db")
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT action, annotator FROM decisions ORDER BY id").fetchall()
    assert rows[-2:] == [("keep", "alice@example.com"), ("undo", "alice@example.com")]
