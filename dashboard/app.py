"""The router and the picture frame: the shared sidebar, then the page chosen in st.navigation.

Run from the repository root: `streamlit run dashboard/app.py` (or `make demo`)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run` puts dashboard/ on sys.path, not the repo root
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402 (after the sys.path fix above)

from dashboard import guard, state, widgets  # noqa: E402
from dashboard.workspace import Selection  # noqa: E402
from influence_core import (  # noqa: E402
    DATASETS,
    ESTIMATORS,
    damping_refusal,
    default_data_root,
    tune_runtime,
)

tune_runtime()

VIEWS = Path(__file__).resolve().parent / "views"
MODEL_CHOICES = ["mlp", "cnn"]


def pages() -> list[st.Page]:
    """Every page of the app, in menu order."""
    return [
        st.Page(VIEWS / "dataset.py", title="Dataset", icon=":material/grid_view:", default=True),
        st.Page(VIEWS / "explore.py", title="Explore", icon=":material/travel_explore:"),
        st.Page(VIEWS / "review.py", title="Review", icon=":material/fact_check:"),
        st.Page(VIEWS / "evaluate.py", title="Evaluate", icon=":material/monitoring:"),
    ]


def run() -> None:
    st.set_page_config(layout="wide", page_title="influence-audit")
    guard.require_safe_exposure()
    page = st.navigation(pages())
    dataset, model, data_root = widgets.problem_ui(
        list(DATASETS), MODEL_CHOICES, str(default_data_root()),
        keys=(state.DATASET, state.MODEL, state.DATA_ROOT, state.IMAGE_FOLDER),
    )
    given = state.url_text(state.DAMPING)  # before the widget drops a value it cannot take
    checkpoint, method, damping, annotator = widgets.audit_ui(
        list(ESTIMATORS), keys=(state.CHECKPOINT, state.METHOD, state.DAMPING, state.ANNOTATOR),
        identity=guard.identity(),
    )
    if given not in (None, "") and (refused := damping_refusal(given)):
        st.warning(f"Ignored damping={given} from the link: {refused}; using "
                   f"{damping or 'the default'}.")
    if not dataset:
        st.info("Enter the path of an image folder (one sub-folder per class) in the sidebar.")
        return
    dataset, data_root, checkpoint = guard.confined(dataset, data_root, checkpoint)
    state.set_selection(Selection(dataset, model, data_root, checkpoint, method, damping,
                                  annotator))
    page.run()


if __name__ == "__main__":
    run()
