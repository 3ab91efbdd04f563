"""Every Streamlit cache, widget key and session value, behind typed getters.

This is the only dashboard file that uses st.cache_resource, st.cache_data or st.session_state.
Widget keys double as URL query parameters (bind="query-params"), so choices survive a reload.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from influence_core import (
    Problem,
    default_data_root,
    load_dataset,
    load_problem,
    predict_logits,
    recipe,
)

THUMB_PX = 96  # longest thumbnail edge, in pixels; small images are upscaled with nearest

# Widget keys, each also the name of the query parameter it is bound to.
DATASET, MODEL, DATA_ROOT, IMAGE_FOLDER = "dataset", "model", "data_root", "folder"
GRID_SPLIT, GRID_LABEL, GRID_WRONG, GRID_PAGE = "split", "label", "wrong", "grid_page"
_SELECTION = "selection"


@dataclass(frozen=True)
class Selection:
    """The shared sidebar's choices; every page reads them through `selection()`."""

    dataset: str = "digits"
    model: str = "mlp"
    data_root: str = ""


def set_selection(sel: Selection) -> None:
    st.session_state[_SELECTION] = sel


def selection() -> Selection:
    return st.session_state.get(_SELECTION) or Selection(data_root=str(default_data_root()))


def reset_grid_page() -> None:
    """on_change callback for the grid filters: a new filter starts at page 1."""
    st.session_state[GRID_PAGE] = 1


class _Loading:
    """One load (or training run) of a Problem in a background thread.

    The thread lets training go on when a click reruns the script: a rerun stops the polling
    loop in `get_problem`, never the training itself."""

    def __init__(self, dataset: str, model: str, data_root: str) -> None:
        self.fraction, self.text = 0.0, f"Loading {dataset}/{model}"
        self.problem: Problem | None = None
        self.error: Exception | None = None
        self.finished = threading.Event()
        args = (dataset, model, data_root)
        threading.Thread(target=self._load, args=args, daemon=True).start()

    def _report(self, done: int, total: int, what: str) -> None:
        self.fraction, self.text = min(done / max(total, 1), 1.0), f"{what}: step {done} of {total}"

    def _load(self, dataset: str, model: str, data_root: str) -> None:
        try:
            cfg = recipe(dataset, model)
            self.problem = load_problem(cfg, data_root, progress=self._report)
        except Exception as exc:  # noqa: BLE001 (re-raised in the script thread by get_problem)
            self.error = exc
        finally:
            self.finished.set()


@st.cache_resource(show_spinner=False)
def _loading(dataset: str, model: str, data_root: str) -> _Loading:
    return _Loading(dataset, model, data_root)


def get_problem(dataset: str, model: str, data_root: str) -> Problem:
    """The trained model and both splits, shared by all sessions.

    Trains when no checkpoint exists for the recipe, with an st.progress bar fed by the core's
    progress callback. Raises DatasetError / CheckpointError (and forgets the failure, so the
    next run retries)."""
    loading = _loading(dataset, model, data_root)
    bar = st.empty()
    while not loading.finished.wait(0.25):
        bar.progress(loading.fraction, text=loading.text)
    bar.empty()
    if loading.error is not None:
        _loading.clear(dataset, model, data_root)
        raise loading.error
    return loading.problem


@st.cache_data(show_spinner=False, max_entries=16)
def _examples(
    dataset: str, model: str, data_root: str, split: str, _problem: Problem
) -> pd.DataFrame:
    data = _problem.train if split == "train" else _problem.test
    names = np.array(data.class_names)
    labels = data.labels.numpy()
    predictions = predict_logits(_problem.model, data).argmax(1).numpy()
    return pd.DataFrame({
        "index": np.arange(len(labels)), "label": names[labels],
        "prediction": names[predictions], "correct": labels == predictions,
    })


def examples(
    problem: Problem, sel: Selection, split: str, label: str | None = None, only_wrong: bool = False
) -> pd.DataFrame:
    """One row per example of `split` (index, label, prediction, correct), filtered."""
    frame = _examples(sel.dataset, sel.model, sel.data_root, split, problem)
    if label is not None:
        frame = frame[frame["label"] == label]
    if only_wrong:
        frame = frame[~frame["correct"]]
    return frame


def _png(img: Image.Image) -> bytes:
    scale = THUMB_PX / max(img.size)
    size = (round(img.width * scale), round(img.height * scale))
    # Nearest keeps 8x8 and 28x28 pixels crisp; larger photos are shrunk smoothly.
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    buf = io.BytesIO()
    img.resize(size, resample).save(buf, format="PNG")
    return buf.getvalue()


@st.cache_data(show_spinner=False, max_entries=512)
def thumbnails(dataset: str, data_root: str, split: str, indices: tuple[int, ...]) -> list[bytes]:
    """PNG thumbnails (longest edge THUMB_PX) of examples `indices` of `split`."""
    train, test = load_dataset(dataset, data_root)
    data = train if split == "train" else test
    return [_png(data.image(i)) for i in indices]
