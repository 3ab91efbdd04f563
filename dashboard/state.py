"""Every Streamlit cache, widget key, session value and URL parameter, behind typed getters.

This is the only dashboard file that uses st.cache_resource, st.cache_data, st.session_state or
st.query_params. Widget keys double as URL query parameters (bind="query-params"), so choices
survive a reload. Models are cached per decision-log version (a Newton step never mutates a
cached object: the next version is a new entry)."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from dashboard.jobs import Job
from influence_core import (
    AttributionIndex,
    AuditSession,
    AuditState,
    CheckpointError,
    DatasetError,
    Evidence,
    Preview,
    Problem,
    Progress,
    ReviewCache,
    artifacts_root,
    decisions_frame,
    default_data_root,
    explain,
    ihvp_errors,
    influenced_queries,
    load_dataset,
    load_problem,
    load_reports,
    open_audit,
    open_index,
    predict_logits,
    query_probabilities,
    query_vectors,
    recipe,
    record_many,
    review_queue,
    reviewed,
    run_quick,
    self_influence_values,
    train_predictions,
    train_probabilities,
    undo_last,
)

THUMB_PX = 96  # longest thumbnail edge, in pixels; small images are upscaled with nearest
LARGE_PX = 256  # the review card's image
TOP_K = 8  # training images per list (helpful, harmful, support, oppose)

# Widget keys, each also the name of the query parameter it is bound to.
DATASET, MODEL, DATA_ROOT, IMAGE_FOLDER = "dataset", "model", "data_root", "folder"
CHECKPOINT, METHOD, DAMPING, ANNOTATOR = "checkpoint", "method", "damping", "annotator"
GRID_SPLIT, GRID_LABEL, GRID_WRONG, GRID_PAGE = "split", "label", "wrong", "grid_page"
QUEUE_LABEL, QUEUE_DIFFERS, BULK_TABLE, BULK_ACTION = "q_label", "q_differs", "bulk", "bulk_action"
EX_LABEL, EX_WRONG, EX_CONF, EX_PAGE, EX_UPLOAD = "x_label", "x_wrong", "x_conf", "x_page", "upload"
EX_JUMP = "x_jump"
# Plain URL parameters (not widgets): the review position and Explore's selections.
SUSPECT, QUERY, TRAIN_CARD = "suspect", "query", "train"
_SELECTION, _NOTICE = "selection", "notice"


@dataclass(frozen=True)
class Selection:
    """The shared sidebar's choices; every page reads them through `selection()`."""

    dataset: str = "digits"
    model: str = "mlp"
    data_root: str = ""
    checkpoint: str = ""  # a user's state_dict; "" = the recipe's own trained checkpoint
    method: str = "ekfac"  # curvature for the Newton step (the index is always EK-FAC)
    damping: float | None = None  # Newton step's lambda; None: open_session's default
    annotator: str = "anonymous"

    @property
    def key(self) -> tuple:
        """What determines the workspace (the annotator does not)."""
        return (self.dataset, self.model, self.data_root, self.checkpoint, self.method,
                self.damping)


def set_selection(sel: Selection) -> None:
    st.session_state[_SELECTION] = sel


def selection() -> Selection:
    return st.session_state.get(_SELECTION) or Selection(data_root=str(default_data_root()))


def reset_page(key: str) -> Callable[[], None]:
    """An on_change callback for grid filters: a new filter starts at page 1."""
    return lambda: st.session_state.__setitem__(key, 1)


def _wait(job: Job, forget: Callable[[], None]) -> object:
    bar = st.empty()
    while not job.finished.wait(0.25):
        bar.progress(job.fraction, text=job.text)
    bar.empty()
    if job.error is not None:
        forget()
        raise job.error
    return job.result


def _load(dataset: str, model: str, data_root: str, checkpoint: str, progress: Progress
          ) -> Problem:
    return load_problem(recipe(dataset, model), data_root, checkpoint or None, progress)


@st.cache_resource(show_spinner=False)
def _problem_job(dataset: str, model: str, data_root: str, checkpoint: str = "") -> Job:
    return Job(lambda p: _load(dataset, model, data_root, checkpoint, p),
                f"Loading {dataset}/{model}")


def get_problem(dataset: str, model: str, data_root: str, checkpoint: str = "") -> Problem:
    """The trained model and both splits, shared by all sessions. Trains (st.progress) when no
    checkpoint exists. Raises DatasetError / CheckpointError (and forgets the failure)."""
    args = (dataset, model, data_root, checkpoint)
    return _wait(_problem_job(*args), lambda: _problem_job.clear(*args))


@dataclass
class Workspace:
    """One problem's attribution index and audit session (shared by every browser session)."""

    key: tuple
    problem: Problem
    index: AttributionIndex
    session: AuditSession
    queries: object  # (M, dim) index vectors of the test queries (influence_core.query_vectors)
    cache: ReviewCache  # evidence and previews, prefetched while a card is on screen


def _open(sel: Selection, problem: Problem, progress: Progress) -> Workspace:
    index = open_index(problem, progress)
    session = open_audit(problem, index, sel.method, sel.damping, progress=progress)
    progress(0, 1, "Setup: index vectors of the test queries")
    queries = query_vectors(index, problem.test)  # Explore's training cards: (M, dim) @ x_i
    return Workspace(sel.key, problem, index, session, queries, ReviewCache(session, index, TOP_K))


@st.cache_resource(show_spinner=False)
def _workspace_job(key: tuple, _sel: Selection, _problem: Problem) -> Job:
    return Job(lambda p: _open(_sel, _problem, p), "Setup: precomputing the attribution index")


def workspace(sel: Selection) -> Workspace:
    """The Setup step: precompute (with st.progress) when artifacts are missing, then load."""
    problem = get_problem(sel.dataset, sel.model, sel.data_root, sel.checkpoint)
    return _wait(_workspace_job(sel.key, sel, problem), lambda: _workspace_job.clear(sel.key))


def workspace_or_stop(sel: Selection) -> Workspace:
    """workspace(sel), or an error message (not a traceback) and the end of this page's run."""
    try:
        return workspace(sel)
    except (DatasetError, CheckpointError) as exc:
        st.error(f"Cannot load {sel.dataset} / {sel.model}: {exc}")
        st.stop()


@st.cache_resource(show_spinner=False, max_entries=8)
def _audit_state(key: tuple, version: int, _ws: Workspace) -> AuditState:
    return _ws.session.state()  # thread-safe; cached by edit set (prefetched states are hits)


def audit_state(ws: Workspace) -> AuditState:
    """The current model (base + Newton step over the log), keyed by the log's version."""
    return _audit_state(ws.key, ws.session.log.version(), ws)


@st.cache_data(show_spinner=False, max_entries=8)
def queue(key: tuple, version: int, _ws: Workspace) -> pd.DataFrame:
    return review_queue(_ws.session, _audit_state(key, version, _ws))


def why_flagged(key: tuple, i: int, label: int, _ws: Workspace) -> Evidence:
    return _ws.cache.evidence(i, label)  # ReviewCache: thread-safe LRU, prefetched


def edit_preview(key: tuple, version: int, i: int, action: str, label: int | None,
                 _ws: Workspace) -> Preview:
    return _ws.cache.preview(_audit_state(key, version, _ws), i, action, label)


def prefetch(ws: Workspace, i: int, neighbour: int | None) -> None:
    """After suspect i's card is drawn: compute what its buttons will need, in the background."""
    ws.cache.warm(audit_state(ws), i, reviewed(ws.session.log), neighbour)


@st.cache_data(show_spinner=False, max_entries=256)
def explain_test(key: tuple, i: int, _ws: Workspace) -> tuple:
    return explain(_ws.index, _ws.problem.test.tensor([i])[0], TOP_K)


@st.cache_data(show_spinner=False, max_entries=32)
def explain_upload(key: tuple, data: bytes, _ws: Workspace) -> tuple:
    image = Image.open(io.BytesIO(data))
    return explain(_ws.index, _ws.problem.train.normalise(image)[0], TOP_K)


@st.cache_data(show_spinner=False, max_entries=256)
def influenced(key: tuple, i: int, _ws: Workspace) -> tuple:
    return influenced_queries(_ws.index, _ws.queries, i, TOP_K)


@st.cache_data(show_spinner=False, max_entries=4)
def train_preds(key: tuple, _ws: Workspace) -> np.ndarray:
    return train_predictions(_ws.index)


@st.cache_data(show_spinner=False, max_entries=4)
def test_frame(key: tuple, version: int, _ws: Workspace) -> pd.DataFrame:
    """One row per test example: index, label, prediction, confidence (current model)."""
    probs = query_probabilities(_audit_state(key, version, _ws))
    labels = _ws.problem.test.labels.numpy()
    return pd.DataFrame({"index": np.arange(len(labels)), "label": labels,
                         "prediction": probs.argmax(1), "confidence": probs.max(1)})


# ---- URL parameters and decisions ------------------------------------------------------------
def url_int(name: str) -> int | None:
    value = st.query_params.get(name)
    return int(value) if value not in (None, "") and value.lstrip("-").isdigit() else None


def set_url(name: str, value: int | None) -> None:
    """on_click target: set (or with None, drop) a plain URL parameter."""
    if value is None:
        st.query_params.pop(name, None)
    else:
        st.query_params[name] = str(value)


def relabel_key(i: int) -> str:
    return f"relabel_to_{i}"


def chosen_label(i: int, default: int) -> int:
    return int(st.session_state.get(relabel_key(i), default))


def decide(ws: Workspace, action: str, i: int, version: int, annotator: str) -> None:
    """on_click: append the decision to the durable log (committed before this returns), then
    drop the review position so the next unreviewed suspect of the re-ranked queue shows."""
    label = None
    if action == "relabel":  # the card's choice; its widget state can be missing after a
        given = int(audit_state(ws).labels[i])  # fragment-only run: then the suggestion
        label = chosen_label(i, why_flagged(ws.key, i, given, ws).suggested)
    try:
        ws.session.log.record(i, action, label, annotator, version)
    except ValueError as exc:  # e.g. another annotator removed it meanwhile: say so, keep going
        st.session_state[_NOTICE] = f"Not recorded: {exc}"
        return
    set_url(SUSPECT, None)


def notice() -> str | None:
    """The message of a refused decision (shown once, on the next run)."""
    return st.session_state.pop(_NOTICE, None)


def undo_last_decision(ws: Workspace, version: int, annotator: str) -> None:
    undo_last(ws.session.log, annotator, version)


def apply_bulk(ws: Workspace, rows: pd.DataFrame, version: int, annotator: str) -> None:
    """on_click: one action (BULK_ACTION) on the rows selected in the bulk table."""
    picked = rows.iloc[st.session_state[BULK_TABLE].selection.rows]
    action = st.session_state.get(BULK_ACTION, "keep")
    labels = picked["alternative"].tolist() if action == "relabel" else [None] * len(picked)
    record_many(ws.session.log, picked["index"].tolist(), action, labels, annotator, version)


# ---- images ----------------------------------------------------------------------------------
def _png(img: Image.Image, px: int) -> bytes:
    scale = px / max(img.size)
    size = (round(img.width * scale), round(img.height * scale))
    # Nearest keeps 8x8 and 28x28 pixels crisp; larger photos are shrunk smoothly.
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    buf = io.BytesIO()
    img.resize(size, resample).save(buf, format="PNG")
    return buf.getvalue()


@st.cache_data(show_spinner=False, max_entries=512)
def thumbnails(dataset: str, data_root: str, split: str, indices: tuple[int, ...],
               px: int = THUMB_PX) -> list[bytes]:
    """PNG thumbnails (longest edge px) of examples `indices` of `split`."""
    train, test = load_dataset(dataset, data_root)
    data = train if split == "train" else test
    return [_png(data.image(int(i)), px) for i in indices]


@st.cache_data(show_spinner=False, max_entries=16)
def _examples(dataset: str, model: str, data_root: str, split: str, _problem: Problem
              ) -> pd.DataFrame:
    data = _problem.train if split == "train" else _problem.test
    names = np.array(data.class_names)
    labels = data.labels.numpy()
    predictions = predict_logits(_problem.model, data).argmax(1).numpy()
    return pd.DataFrame({"index": np.arange(len(labels)), "label": names[labels],
                         "prediction": names[predictions], "correct": labels == predictions})


def examples(problem: Problem, sel: Selection, split: str, label: str | None = None,
             only_wrong: bool = False) -> pd.DataFrame:
    """One row per example of `split` (index, label, prediction, correct), filtered."""
    frame = _examples(sel.dataset, sel.model, sel.data_root, split, problem)
    if label is not None:
        frame = frame[frame["label"] == label]
    if only_wrong:
        frame = frame[~frame["correct"]]
    return frame


# ---- the review queue ------------------------------------------------------------------------
def log_version(ws: Workspace) -> int:
    return ws.session.log.version()


@st.cache_data(show_spinner=False, max_entries=64)
def train_probs(key: tuple, version: int, i: int, _ws: Workspace) -> np.ndarray:
    """(K,) the current model's class probabilities on training example i."""
    return train_probabilities(_audit_state(key, version, _ws), _ws.problem.train, [i])[0]


def train_tiles(sel: Selection, ws: Workspace, idx: list[int], scores: list[float]
                ) -> tuple[list[bytes], list[str]]:
    """Thumbnails and "#i · label · pred · score" captions of training examples."""
    names, preds = ws.problem.train.class_names, train_preds(ws.key, ws)
    labels = audit_state(ws).labels[idx].tolist()  # current labels (after relabels)
    captions = [f"#{i} · label {names[y]} · pred {names[p]} · {s:+.3g}"
                for i, y, p, s in zip(idx, labels, preds[idx], scores)]
    return thumbnails(sel.dataset, sel.data_root, "train", tuple(idx)), captions


def current_suspect(rows: pd.DataFrame) -> int | None:
    """The review position from the URL, else the first unreviewed row."""
    pinned = url_int(SUSPECT)
    if pinned is not None:
        return pinned
    todo = rows[rows["decision"] == ""]
    return int(todo["index"].iloc[0]) if len(todo) else None


def review_counts(ws: Workspace) -> tuple[int, int]:
    """(training examples with an active decision, suspects in the queue)."""
    return len(reviewed(ws.session.log)), len(ws.session.suspects)


def has_decision(ws: Workspace, annotator: str) -> bool:
    return any(d.annotator == annotator for d in reviewed(ws.session.log).values())


def recent_decisions(ws: Workspace, n: int | None = 5) -> pd.DataFrame:
    """The newest n rows of the decision log (all with None), newest first."""
    frame = decisions_frame(ws.session.log)
    return (frame if n is None else frame.tail(n)).iloc[::-1]


# ---- Explore ---------------------------------------------------------------------------------
def jump_to_query() -> None:
    """on_change of the jump-to-index box: that test example becomes the selected query."""
    set_url(QUERY, st.session_state.get(EX_JUMP))


@st.cache_data(show_spinner=False, max_entries=4)
def self_influence(key: tuple, _ws: Workspace) -> np.ndarray:
    return self_influence_values(_ws.index)


@st.cache_data(show_spinner=False, max_entries=4)
def self_influence_rank(key: tuple, _ws: Workspace) -> np.ndarray:
    """(N,) 0 for the most self-influential training example."""
    values = self_influence(key, _ws)
    rank = np.empty(len(values), dtype=int)
    rank[np.argsort(-values)] = np.arange(len(values))
    return rank


def test_tiles(sel: Selection, frame: pd.DataFrame, idx: list[int], scores: list[float] | None
               ) -> tuple[list[bytes], list[str]]:
    """Thumbnails and "#i · label · pred · confidence (or score)" captions of test examples."""
    train, _ = load_dataset(sel.dataset, sel.data_root)
    names, rows = train.class_names, frame.iloc[idx]
    tails = [f"{c:.0%}" for c in rows["confidence"]] if scores is None else [
        f"{s:+.3g}" for s in scores]
    captions = [f"#{i} · label {names[y]} · pred {names[p]} · {t}"
                for i, y, p, t in zip(idx, rows["label"], rows["prediction"], tails)]
    return thumbnails(sel.dataset, sel.data_root, "test", tuple(idx)), captions


# ---- Evaluate --------------------------------------------------------------------------------
_IHVP = "ihvp_requested"


SHIPPED_REPORTS = Path(__file__).resolve().parents[1] / "docs" / "reports"
REPORT_KINDS = ("lds_", "mislabel_", "unlearning_", "quick_")
_QUICK = "quick_requested"


def reports_folder() -> Path:
    return artifacts_root() / "reports"


def _for_problem(name: str, dataset: str, model: str) -> bool:
    """Is the report `name` (<kind>_<dataset>_<model>[_variant], '-' or '_') about this problem?"""
    name, tag = name.replace("-", "_"), f"{dataset}_{model}"
    rest = next((name[len(k):] for k in REPORT_KINDS if name.startswith(k)), None)
    return rest is not None and (rest == tag or rest.startswith(tag + "_"))


@st.cache_data(show_spinner=False, ttl=30)
def reports(dataset: str, model: str) -> dict[str, dict]:
    """This problem's reports, re-read every 30 s: the ones that ship in docs/reports (source
    "shipped") and the user's own in $INFLUENCE_AUDIT_HOME/reports ("yours"; same name wins)."""
    found = {}
    for source, folder in (("shipped", SHIPPED_REPORTS), ("yours", reports_folder())):
        for name, report in load_reports(folder).items():
            if _for_problem(name, dataset, model):
                found[name] = {**report, "source": source}
    return found


def request_quick() -> None:
    st.session_state[_QUICK] = True


def quick_requested() -> bool:
    return bool(st.session_state.get(_QUICK))


@st.cache_resource(show_spinner=False)
def _quick_job(folder: str, data_root: str) -> Job:
    return Job(lambda p: run_quick(Path(folder), data_root or None, p),
               "Quick evaluation of digits/mlp")


def run_quick_evaluation(data_root: str) -> None:
    """Run (or join, after a rerun) the quick digits/mlp evaluation with a progress bar; its
    report goes to the user's reports folder. Then forget the job, so a later click runs anew."""
    try:
        _wait(_quick_job(str(reports_folder()), data_root), lambda: None)
    finally:
        _quick_job.clear()
        reports.clear()
        st.session_state[_QUICK] = False


def request_ihvp() -> None:
    st.session_state[_IHVP] = True


def ihvp_requested() -> bool:
    return bool(st.session_state.get(_IHVP))


@st.cache_data(show_spinner="Fitting the exact curvature and the estimators...", max_entries=4)
def estimator_errors(key: tuple, _ws: Workspace) -> tuple[str, dict[str, float]]:
    return ihvp_errors(_ws.problem)
