"""The model-dependent tables and values behind the dashboard's grids, captions and buttons.

Each function turns exported objects (Problem, AuditState, AttributionIndex, DecisionLog) into
plain values: pandas frames, numpy arrays, ints, strings; and the Review page's writes to the
decision log and exports of it. The dashboard caches them and formats them; it never indexes a
tensor or runs the model itself. Nothing here knows Streamlit.
Class columns hold class ids, except `example_table`'s, which hold class names."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .app_api import explain, query_probabilities, reviewed
from .attribution.index import AttributionIndex
from .audit.session import AuditSession, AuditState
from .audit.store import Decision, DecisionLog, active_decisions
from .audit.unlearning import newton_damping
from .data.datasets import ImageDataset
from .data.images import decode_image
from .data.registry import Problem
from .data.training import predict_logits

Explanation = tuple[int, np.ndarray, tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def example_table(problem: Problem, split: str) -> pd.DataFrame:
    """One row per example of `split` ("train" or "test") under the problem's base model:
    index, label and prediction (class names), correct (label == prediction)."""
    data = problem.train if split == "train" else problem.test
    names = np.array(data.class_names)
    labels = data.labels.numpy()
    predictions = predict_logits(problem.model, data).argmax(1).numpy()
    return pd.DataFrame({"index": np.arange(len(labels)), "label": names[labels],
                         "prediction": names[predictions], "correct": labels == predictions})


def query_table(state: AuditState, test: ImageDataset) -> pd.DataFrame:
    """One row per query (test example) under the current model: index, label, prediction,
    confidence (the largest class probability)."""
    probs = query_probabilities(state)  # (M, K)
    labels = test.labels.numpy()
    return pd.DataFrame({"index": np.arange(len(labels)), "label": labels,
                         "prediction": probs.argmax(1), "confidence": probs.max(1)})


def train_rows(state: AuditState, predictions: np.ndarray, indices: list[int]) -> pd.DataFrame:
    """index, label (current: after relabels) and prediction (from `predictions`, (N,), e.g.
    the base model's `train_predictions`) of the training examples `indices`, in that order."""
    idx = np.asarray(indices, dtype=int)
    return pd.DataFrame({"index": idx, "label": state.labels[idx.tolist()].numpy(),
                         "prediction": predictions[idx]})


def current_label(state: AuditState, i: int) -> int:
    """Training example i's label in `state` (after relabels)."""
    return int(state.labels[i])


def is_removed(state: AuditState, i: int) -> bool:
    """Is training example i removed from the training set in `state`?"""
    return bool(state.removed[i])


def explain_query(index: AttributionIndex, test: ImageDataset, i: int, k: int = 8
                  ) -> Explanation:
    """`explain` of test example i (see app_api.explain for the tuple)."""
    return explain(index, test.tensor([i])[0], k)


UPLOAD_MAX_PIXELS = 4096 * 4096  # an upload is shrunk to the model's input: decode no more
def explain_image(index: AttributionIndex, train: ImageDataset, data: bytes, k: int = 8
                  ) -> Explanation:
    """`explain` of an encoded image file (an upload), converted to `train`'s input format
    (data.images.decode_image: transparency onto the dataset's background). Raises ImageError
    (one of INPUT_ERRORS) for a file that is not a usable image or has more than
    UPLOAD_MAX_PIXELS pixels (read from its header, before decoding)."""
    image = decode_image(data, train.background(), max_pixels=UPLOAD_MAX_PIXELS)
    return explain(index, train.normalise(image)[0], k)


def rank_descending(values: np.ndarray) -> np.ndarray:
    """(N,) each value's rank, 0 for the largest (e.g. of self-influence)."""
    rank = np.empty(len(values), dtype=int)
    rank[np.argsort(-values)] = np.arange(len(values))
    return rank


def record_decision(session: AuditSession, i: int, action: str, label: int | None,
                    annotator: str, model_version: int, ranking: str = "") -> str | None:
    """Append one decision, made under the queue's `ranking` (a RANKINGS key), to the durable log
    (committed before this returns). Returns None, or the reason it was refused and nothing
    recorded (e.g. another annotator removed the example meanwhile, or the Newton step it
    gives is not finite)."""
    _, messages = record_many(session, [i], action, [label], annotator, model_version, ranking)
    return messages[0] if messages else None


def record_rows(session: AuditSession, rows: pd.DataFrame, action: str, annotator: str,
                model_version: int, ranking: str = "") -> list[str]:
    """One `action` on each row of a `review_queue` frame (bulk review, under the queue's
    `ranking`); relabel goes to each row's alternative. Returns record_many's messages (empty:
    all recorded)."""
    labels = rows["alternative"].tolist() if action == "relabel" else [None] * len(rows)
    return record_many(session, rows["index"].tolist(), action, labels, annotator,
                       model_version, ranking)[1]


def review_progress(session: AuditSession) -> tuple[int, int]:
    """(training examples with an active decision, suspects in the queue)."""
    return len(reviewed(session.log)), len(session.suspects)


def has_decision(log: DecisionLog, annotator: str) -> bool:
    """Does `annotator` have an active decision (one that Undo would take back)?"""
    return any(d.annotator == annotator for d in reviewed(log).values())


def recent_decisions(log: DecisionLog, n: int | None = 5) -> pd.DataFrame:
    """The newest n rows of the decision log (all with None), newest first (decisions_frame)."""
    frame = decisions_frame(log)
    return (frame if n is None else frame.tail(n)).iloc[::-1]


def record_many(session: AuditSession, indices: list[int], action: str,
                labels: list[int | None], annotator: str, model_version: int, ranking: str = ""
                ) -> tuple[list[Decision], list[str]]:
    """Record one decision per index (bulk review; `ranking`: the queue's RANKINGS key), all or
    none (AuditSession.apply). Returns (recorded, messages): nothing recorded and the reason
    when the batch is refused; otherwise the requests already in force, which are skipped
    (e.g. "index 3 already removed"), so clicking twice records once."""
    requests = [(action, int(i), None if y is None else int(y)) for i, y in zip(indices, labels)]
    try:
        return session.apply(requests, annotator, model_version, ranking)
    except ValueError as exc:
        return [], [str(exc)]


def undo_last(log: DecisionLog, annotator: str, model_version: int, ranking: str = ""
              ) -> Decision | None:
    """Undo `annotator`'s newest active decision (the undo row records `ranking`, the undoing
    session's); None when there is none."""
    mine = [d for d in active_decisions(log.decisions()) if d.annotator == annotator]
    return log.undo(mine[-1].id, annotator, model_version, ranking) if mine else None


def decisions_frame(log: DecisionLog) -> pd.DataFrame:
    """Every row of the decision log (undo rows included), oldest first."""
    cols = ["id", "index", "action", "label", "annotator", "ts", "model_version", "undoes",
            "ranking"]
    frame = pd.DataFrame([[getattr(d, c) for c in cols] for d in log.decisions()], columns=cols)
    return frame.astype({"label": "Int64", "undoes": "Int64"})


def labels_csv(log: DecisionLog) -> bytes:
    """The cleaned label file (DecisionLog.export_csv) as bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        return log.export_csv(Path(tmp) / "labels.csv").read_bytes()


def damping_refusal(text: str) -> str | None:
    """Why a Newton-step damping given as text (the app's damping=... link parameter) cannot be
    used, or None: 0 means the default; anything else must be a number > 0 and finite
    (audit.unlearning.newton_damping)."""
    try:
        value = float(text)
    except ValueError:
        return f"{text!r} is not a number"
    if value == 0:
        return None
    try:
        newton_damping(None, value)
    except ValueError as exc:
        return str(exc)
    return None
