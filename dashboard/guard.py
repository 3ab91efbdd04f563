"""What the served app checks before a page runs, since any URL parameter can be crafted: who may
connect (the bound address, st.login), who is annotating (the logged-in identity), and which
paths a request may name. The rules are influence_core's (exposure_refusal, confine); this module
only reads them from Streamlit and stops the run with a message."""

from __future__ import annotations

import streamlit as st

from influence_core import PathNotAllowedError, confine, exposure_refusal

IMAGE_FOLDER_PREFIX = "imagefolder:"


AUTH_KEYS = {"redirect_uri", "cookie_secret"}  # what st.login needs besides the provider's


def auth_configured() -> bool:
    """Whether st.login is set up: an [auth] section in .streamlit/secrets.toml with AUTH_KEYS."""
    try:
        auth = st.secrets.get("auth")
    except FileNotFoundError:  # StreamlitSecretNotFoundError: no secrets file at all
        return False
    return auth is not None and set(auth) >= AUTH_KEYS


def require_safe_exposure() -> None:
    """Stop with a message when the server listens beyond loopback with nobody checking who
    connects; with st.login configured, stop until the user has logged in."""
    refusal = exposure_refusal(st.get_option("server.address"), auth_configured())
    if refusal is not None:
        st.error(refusal)
        st.stop()
    if auth_configured() and not st.user.get("is_logged_in"):
        st.info("Log in to audit this dataset: decisions are recorded under your identity.")
        st.button("Log in", on_click=st.login, type="primary", key="login")
        st.stop()


def identity() -> str | None:
    """The logged-in user's email (else name) when st.login is configured; None otherwise."""
    if not auth_configured() or not st.user.get("is_logged_in"):
        return None
    return st.user.get("email") or st.user.get("name") or None


def confined(dataset: str, data_root: str, checkpoint: str) -> tuple[str, str, str]:
    """(dataset, data root, checkpoint) with every path resolved inside the server's allowed
    roots (influence_core.confine); otherwise an error message and a stop, before anything is
    read, created or downloaded."""
    try:
        root = str(confine(data_root, "The data root"))
        if dataset.startswith(IMAGE_FOLDER_PREFIX):
            folder = confine(dataset.removeprefix(IMAGE_FOLDER_PREFIX), "The image folder")
            dataset = f"{IMAGE_FOLDER_PREFIX}{folder}"
        checkpoint = str(confine(checkpoint, "The checkpoint")) if checkpoint else ""
    except PathNotAllowedError as exc:
        st.error(str(exc))
        st.stop()
    return dataset, root, checkpoint
