"""Every Streamlit cache, widget key, session value and URL parameter, behind typed getters. This
is the only dashboard file that uses st.cache_resource, st.cache_data, st.session_state or
st.query_params, and it holds nothing else: each cache wraps one core function (or one of
dashboard.images, dashboard.report_files, dashboard.workspace), and the decision callbacks record
through the core. Widget keys double as URL query parameters (bind="query-params"), so choices
survive a reload. Models are cached per decision-log version (a Newton step adds, never mutates)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import images, report_files
from dashboard.jobs import Job, wait
from dashboard.workspace import TOP_K, Selection, Workspace, open_attribution, open_workspace
from influence_core import (
    DEFAULT_RANKING,
    INPUT_ERRORS,
    AuditState,
    Claims,
    Preview,
    Problem,
    Progress,
    TooCostlyError,
    check_estimator,
    current_round,
    default_data_root,
    example_table,
    explain_image,
    explain_query,
    ihvp_errors,
    influenced_queries,
    load_problem,
    query_table,
    rank_descending,
    recipe,
    record_decision,
    record_rows,
    review_queue,
    reviewed,
    round_problem,
    run_quick,
    self_influence_values,
    train_predictions,
    train_probabilities,
    undo_last,
)

# Widget keys, each also the name of the query parameter it is bound to.
DATASET, MODEL, DATA_ROOT, IMAGE_FOLDER = "dataset", "model", "data_root", "folder"
CHECKPOINT, METHOD, DAMPING, ANNOTATOR = "checkpoint", "method", "damping", "annotator"
GRID_SPLIT, GRID_LABEL, GRID_WRONG, GRID_PAGE = "split", "label", "wrong", "grid_page"
QUEUE_LABEL, QUEUE_DIFFERS, BULK_TABLE, BULK_ACTION = "q_label", "q_differs", "bulk", "bulk_action"
EX_LABEL, EX_WRONG, EX_CONF, EX_PAGE, EX_UPLOAD = "x_label", "x_wrong", "x_conf", "x_page", "upload"
EX_JUMP, RANKING, RELABEL_TO = "x_jump", "ranking", "relabel_to_{}"
# Plain URL parameters (not widgets): the review position and Explore's selections.
SUSPECT, QUERY, TRAIN_CARD = "suspect", "query", "train"
_SELECTION, _NOTICE = "selection", "notice"


def set_selection(sel: Selection) -> None:
    st.session_state[_SELECTION] = sel


def selection() -> Selection:
    return st.session_state.get(_SELECTION) or Selection(data_root=str(default_data_root()))


def reset_page(key: str) -> Callable[[], None]:  # grid filters' on_change: back to page 1
    return lambda: st.session_state.__setitem__(key, 1)


@st.cache_resource(show_spinner=False)
def _job(key: tuple, _target: Callable[[Progress], object], _text: str) -> Job:
    return Job(_target, _text)  # key: ("what", *what it is a function of)


def run_job(key: tuple, target: Callable[[Progress], object], text: str) -> object:
    """Start or join the job of `key` (what it is a function of), drawing its progress until it
    ends; forget it on failure. A finished job stays cached: its key's next call returns it."""
    return wait(_job(key, target, text), lambda: _job.clear(key))


def get_problem(dataset: str, model: str, data_root: str, checkpoint: str = "") -> Problem:
    """The trained model and both splits, shared by all sessions. Trains (st.progress) when no
    checkpoint exists. Raises one of INPUT_ERRORS (and forgets the failure)."""
    return run_job(("problem", dataset, model, data_root, checkpoint), lambda p: load_problem(
        recipe(dataset, model), data_root, checkpoint or None, p), f"Loading {dataset}/{model}")


def workspace(sel: Selection, ranking: str = DEFAULT_RANKING) -> Workspace:
    """The Setup step for the newest cleaning round: the index (precomputed with st.progress when
    missing), then the session whose queue `ranking` orders (extra trainings with st.progress)."""
    problem = get_problem(sel.dataset, sel.model, sel.data_root, sel.checkpoint)
    check_estimator(problem, sel.method)  # TooCostlyError before any fit for a too-large model
    n = rnd.number if (rnd := current_round(problem)) else 1  # the newest cleaning round
    attr = run_job(("attribution", *sel.problem_key, n), lambda p: open_attribution(
        round_problem(problem, rnd), p), "Setup: precomputing the attribution index")
    ws = run_job(("workspace", *sel.key, ranking, n), lambda p: open_workspace(
        sel, problem, attr, ranking, p, rnd), f"Setup: the {ranking} suspect ranking")
    opened().add(ws.key)
    return ws


@st.cache_resource(show_spinner=False)
def opened() -> set[tuple]:  # the Workspace keys whose Setup step finished in this server
    return set()


def workspace_or_stop(sel: Selection, ranking: str | None = None) -> Workspace:
    """workspace(sel, ranking or Review's last choice), or an error message and a stop."""
    try:
        return workspace(sel, ranking or st.session_state.get(RANKING, DEFAULT_RANKING))
    except (*INPUT_ERRORS, TooCostlyError) as exc:
        st.error(f"Cannot open {sel.dataset} / {sel.model} / {sel.method}: {exc}")
        st.stop()


@st.cache_resource(show_spinner=False, max_entries=8)
def _audit_state(key: tuple, version: int, _ws: Workspace) -> AuditState:
    return _ws.session.state()  # thread-safe; cached by edit set (prefetched states are hits)


def audit_state(ws: Workspace) -> AuditState:
    """The current model (base + Newton step over the log), keyed by the log's version."""
    return _audit_state(ws.key, ws.session.log.version(), ws)


def forget_states(ws: Workspace) -> None:  # the Newton step's damping changed: all are stale
    for cached in (_audit_state, queue, test_frame, train_probs):
        cached.clear()
    ws.cache.forget()


@st.cache_data(show_spinner=False, max_entries=8)
def queue(key: tuple, version: int, _ws: Workspace) -> pd.DataFrame:
    return review_queue(_ws.session, _audit_state(key, version, _ws))


def edit_preview(key: tuple, version: int, i: int, action: str, label: int | None,
                 _ws: Workspace) -> Preview:
    return _ws.cache.preview(_audit_state(key, version, _ws), i, action, label)


def prefetch(ws: Workspace, i: int, neighbour: int | None) -> None:
    """After suspect i's card is drawn: compute what its buttons will need, in the background."""
    ws.cache.warm(audit_state(ws), i, reviewed(ws.session.log), neighbour)


@st.cache_data(show_spinner=False, max_entries=256)
def explain_test(key: tuple, i: int, _ws: Workspace) -> tuple:
    return explain_query(_ws.index, _ws.problem.test, i, TOP_K)


@st.cache_data(show_spinner=False, max_entries=32)
def explain_upload(key: tuple, data: bytes, _ws: Workspace) -> tuple:
    return explain_image(_ws.index, _ws.problem.train, data, TOP_K)


@st.cache_data(show_spinner="Scoring the test queries...", max_entries=256)
def influenced(key: tuple, i: int, _ws: Workspace) -> tuple:
    return influenced_queries(_ws.index, _ws.queries.get(), i, TOP_K)


@st.cache_data(show_spinner=False, max_entries=4)
def train_preds(key: tuple, _ws: Workspace) -> np.ndarray:
    return train_predictions(_ws.index)


@st.cache_data(show_spinner=False, max_entries=4)
def test_frame(key: tuple, version: int, _ws: Workspace) -> pd.DataFrame:
    """One row per test example: index, label, prediction, confidence (current model)."""
    return query_table(_audit_state(key, version, _ws), _ws.problem.test)


# ---- URL parameters and decisions ------------------------------------------------------------
def url_text(name: str) -> str | None:
    return st.query_params.get(name)  # as given (a bound widget drops what it cannot show)


def url_int(name: str) -> int | None:
    value = url_text(name)
    return int(value) if value not in (None, "") and value.lstrip("-").isdigit() else None


def set_url(name: str, value: int | None) -> None:
    """on_click target: set (or with None, drop) a plain URL parameter."""
    if value is None:
        st.query_params.pop(name, None)
    else:
        st.query_params[name] = str(value)


def decide(ws: Workspace, action: str, i: int, version: int, annotator: str) -> None:
    """on_click: append the decision to the durable log (committed before this returns), then
    drop the review position so the next unreviewed suspect of the re-ranked queue shows."""
    label = None
    if action == "relabel":  # the card's choice (missing after a fragment run: the suggestion)
        label = int(st.session_state.get(RELABEL_TO.format(i), ws.cache.suggested(
            audit_state(ws), i)))
    refused = record_decision(ws.session, i, action, label, annotator, version,
                              ws.session.ranking)
    if refused is None:  # else, e.g. another annotator removed it meanwhile: say so, go on
        return set_url(SUSPECT, None)
    st.session_state[_NOTICE] = f"Not recorded: {refused}"


def notice() -> str | None:
    """The message of a refused decision or batch (shown once, on the next run)."""
    return st.session_state.pop(_NOTICE, None)


def undo_last_decision(ws: Workspace, version: int, annotator: str) -> None:
    undo_last(ws.session.log, annotator, version, ws.session.ranking)


def apply_bulk(ws: Workspace, rows: pd.DataFrame, version: int, annotator: str) -> None:
    """on_click: one action (BULK_ACTION) on the rows picked in the bulk table, all or none."""
    picked = rows.iloc[st.session_state[BULK_TABLE].selection.rows]
    st.session_state[_NOTICE] = "; ".join(record_rows(  # a refusal, or the rows already done
        ws.session, picked, st.session_state.get(BULK_ACTION, "keep"), annotator, version,
        ws.session.ranking)) or None


# ---- images and the Dataset grid -------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=512)
def thumbnails(dataset: str, data_root: str, split: str, indices: tuple[int, ...],
               px: int = images.THUMB_PX) -> list[bytes]:
    """PNG thumbnails (longest edge px) of examples `indices` of `split`."""
    return images.thumbnail_pngs(dataset, data_root, split, indices, px)


@st.cache_data(show_spinner=False, max_entries=16)
def examples(dataset: str, model: str, data_root: str, checkpoint: str, split: str,
             _problem: Problem) -> pd.DataFrame:
    """One row per example of `split` (index, label, prediction, correct) under the model."""
    return example_table(_problem, split)


# ---- the review queue ------------------------------------------------------------------------
@st.cache_resource(show_spinner=False)
def claims() -> Claims:  # which session shows which suspect (dashboard.claims)
    return Claims()


def review_token() -> str:  # this browser session's name in claims(), made on its first run
    return st.session_state.setdefault("review_token", uuid.uuid4().hex)


@st.cache_data(show_spinner=False, max_entries=64)
def train_probs(key: tuple, version: int, i: int, _ws: Workspace) -> np.ndarray:  # (K,), current
    return train_probabilities(_audit_state(key, version, _ws), _ws.problem.train, [i])[0]


# ---- Explore ---------------------------------------------------------------------------------
def jump_to_query() -> None:  # on_change of the jump box: that test example becomes the query
    set_url(QUERY, st.session_state.get(EX_JUMP))


@st.cache_data(show_spinner=False, max_entries=4)
def self_influence(key: tuple, _ws: Workspace) -> np.ndarray:
    return self_influence_values(_ws.index)


@st.cache_data(show_spinner=False, max_entries=4)
def self_influence_rank(key: tuple, _ws: Workspace) -> np.ndarray:  # 0: the most self-influential
    return rank_descending(self_influence(key, _ws))


# ---- Evaluate --------------------------------------------------------------------------------
# What Evaluate's buttons (QUICK, IHVP) and Review's "Retrain on reviewed labels" ask for
QUICK, IHVP, RETRAIN = "quick_requested", "ihvp_requested", "retrain_requested"


def request(flag: str, value: bool = True) -> None:  # on_click: ask for it (False: it is done)
    st.session_state[flag] = value


def requested(flag: str) -> bool:
    return bool(st.session_state.get(flag))


@st.cache_data(show_spinner=False, ttl=30)
def reports(dataset: str, model: str) -> dict[str, dict]:  # re-read every 30 s
    return report_files.problem_reports(dataset, model)


def run_quick_evaluation(data_root: str) -> None:
    """Run (or join, after a rerun) the quick digits/mlp evaluation with a progress bar; its
    report goes to the user's reports folder. Then forget the job, so a later click runs anew."""
    folder = report_files.reports_folder()
    key = ("quick", str(folder), data_root)
    try:
        run_job(key, lambda p: run_quick(folder, data_root or None, p),
                "Quick evaluation of digits/mlp")
    finally:
        _job.clear(key)
        reports.clear()
        st.session_state[QUICK] = False


@st.cache_data(show_spinner="Fitting the exact curvature and the estimators...", max_entries=4)
def estimator_errors(key: tuple, _ws: Workspace) -> tuple[str, dict[str, float]]:
    return ihvp_errors(_ws.problem)
