"""Render helpers and `*_ui()` input groups. They take and return plain values; the widget keys
(and the query parameters they are bound to) come from dashboard.state."""

from __future__ import annotations

import math
from collections.abc import Callable

import streamlit as st

IMAGE_FOLDER_CHOICE = "imagefolder"  # then a path: the dataset is "imagefolder:<path>"


def problem_ui(
    datasets: list[str], models: list[str], default_root: str, keys: tuple[str, str, str, str]
) -> tuple[str, str, str]:
    """The shared sidebar: (dataset, model, data_root); dataset is "" until a folder is given.

    `keys` are the widget keys for dataset, model, data root and image-folder path."""
    dataset_key, model_key, root_key, folder_key = keys
    with st.sidebar:
        st.subheader("Problem")
        choice = st.selectbox(
            "Dataset", [*datasets, IMAGE_FOLDER_CHOICE], key=dataset_key, bind="query-params",
            help="A bundled or torchvision dataset, or your own folder of class sub-folders.",
        )
        dataset = choice
        if choice == IMAGE_FOLDER_CHOICE:
            folder = st.text_input(
                "Image folder path", key=folder_key, bind="query-params",
                placeholder="/data/my_images (one sub-folder per class)",
            )
            dataset = f"imagefolder:{folder.strip()}" if folder.strip() else ""
        model = st.selectbox("Model", models, key=model_key, bind="query-params")
        data_root = st.text_input(
            "Data root", value=default_root, key=root_key, bind="query-params",
            help="Where torchvision datasets are read from (or downloaded to).",
        )
    return dataset, model, data_root.strip() or default_root


def grid_filter_ui(
    class_names: list[str], keys: tuple[str, str, str], on_change: Callable[[], None]
) -> tuple[str, str | None, bool]:
    """Split, class filter (None: all classes) and a mispredicted-only switch."""
    split_key, label_key, wrong_key = keys
    left, middle, right = st.columns([1, 2, 2], vertical_alignment="bottom")
    split = left.segmented_control(
        "Split", ["train", "test"], default="train", key=split_key, bind="query-params",
        on_change=on_change, required=True,
    )
    label = middle.selectbox(
        "Class", ["all", *class_names], key=label_key, bind="query-params", on_change=on_change,
    )
    only_wrong = right.toggle(
        "Mispredicted only", key=wrong_key, bind="query-params", on_change=on_change,
    )
    return split or "train", None if label == "all" else label, only_wrong


def pager_ui(num_items: int, page_size: int, key: str) -> tuple[int, int]:
    """Page buttons bound to the URL; returns the [start, stop) row range of the chosen page."""
    num_pages = max(1, math.ceil(num_items / page_size))
    page = st.pagination(num_pages, key=key, bind="query-params", max_visible_pages=9)
    start = (page - 1) * page_size
    stop = min(start + page_size, num_items)
    st.caption(f"Page {page} of {num_pages} · examples {start + 1}–{stop} of {num_items}")
    return start, stop


def audit_ui(
    estimators: list[str], keys: tuple[str, str, str, str], identity: str | None = None,
) -> tuple[str, str, float | None, str]:
    """Sidebar: (checkpoint path or "", estimator, damping or None for the heuristic, annotator).
    With `identity` (a logged-in user) the annotator is that identity, not a free-text field."""
    checkpoint_key, method_key, damping_key, annotator_key = keys
    with st.sidebar:
        checkpoint = st.text_input(
            "Checkpoint (optional)", key=checkpoint_key, bind="query-params",
            placeholder="path to a state_dict; empty: the recipe's model",
        )
        st.subheader("Influence")
        method = st.selectbox(
            "Estimator", estimators, key=method_key, bind="query-params",
            help="Curvature of the Newton step that Relabel and Remove apply, and of their "
            "preview. The attribution index (Explore, the evidence on Review cards) is always "
            "EK-FAC, damped per layer by 0.1 × its mean eigenvalue (Kronfluence's heuristic).",
        )
        damping = st.number_input(
            "Newton-step damping λ (0: this model's calibration)", min_value=0.0, value=0.0,
            format="%g", step=0.001, key=damping_key, bind="query-params",
            help="λ in (G + λI)⁻¹ of the Newton step, for every kind of edit. 0 uses the "
            "model's calibration when `python -m influence_core calibrate` has been run for "
            "it: a λ per edit kind (remove, relabel) chosen by retraining on held-out edits, "
            "or no step for a kind where no λ beat doing nothing. Without one: 1000 × the "
            "recipe's weight decay (1e-3 when it has none). Review says which applies.",
        )
        st.subheader("Review")
        if identity:
            st.caption(f"Annotator: **{identity}** (logged in)")
            return checkpoint.strip(), method, damping or None, identity
        annotator = st.text_input("Annotator", value="anonymous", key=annotator_key,
                                  bind="query-params")
    return checkpoint.strip(), method, damping or None, annotator.strip() or "anonymous"


def tiles(
    images: list[bytes], captions: list[str], width: int, columns: int = 8,
    on_click: Callable[[int], None] | None = None, ids: list[int] | None = None,
    button_label: str = "Card", key: str = "tile",
) -> None:
    """Captioned thumbnails, `columns` a row; with on_click, a small button under each tile
    calls on_click(ids[j])."""
    for start in range(0, len(images), columns):
        for j, col in enumerate(st.columns(columns), start=start):
            if j >= len(images):
                break
            col.image(images[j], caption=captions[j], width=width)
            if on_click is not None:
                col.button(button_label, key=f"{key}_{ids[j]}_{j}", on_click=on_click,
                           args=(ids[j],), type="tertiary")


def probability_chart(probs: list[float], class_names: list[str], marked: int | None = None,
                      height: int = 240, key: str | None = None) -> None:
    """Plotly bars of class probabilities; `marked` (the given label) drawn in another colour."""
    import plotly.graph_objects as go

    colours = ["#d62728" if c == marked else "#1f77b4" for c in range(len(class_names))]
    title = "Class probabilities" + (" (red: given label)" if marked is not None else "")
    fig = go.Figure(go.Bar(x=[str(n) for n in class_names], y=probs, marker_color=colours))
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      yaxis_range=[0, 1], title=title, xaxis_type="category")
    st.plotly_chart(fig, width="stretch", key=key)


def queue_filter_ui(class_names: list[str], keys: tuple[str, str]) -> tuple[int | None, bool]:
    """Review queue filters: given class (None: all) and 'prediction differs from label'."""
    label_key, differs_key = keys
    left, right = st.columns(2, vertical_alignment="bottom")
    label = left.selectbox("Given class", ["all", *class_names], key=label_key,
                           bind="query-params")
    differs = right.toggle("Prediction differs from label", key=differs_key, bind="query-params")
    return None if label == "all" else class_names.index(label), differs


RANKING_NAMES = {  # the Review page's names for the core's suspect rankings (RANKINGS keys)
    "default": "Default: training loss (out-of-sample and training-run losses if it memorised)",
    "self_influence": "Self-influence (EK-FAC)",
    "loss": "Training loss",
    "checkpoint_loss": "Loss over training checkpoints",
    "checkpoint_loss+parent": "Loss over the retrained model's checkpoints, rank-averaged with "
                              "the previous round's queue",
    "parent": "The previous round's queue order",
    "cleanlab": "Cleanlab-style: out-of-sample confidence",
}


def ranking_name(key: str) -> str:
    return RANKING_NAMES.get(key, key)


def ranking_ui(helps: dict[str, str], default: str, key: str) -> str:
    """The suspect ranking that orders the Review queue: a RANKINGS key (`helps`: key -> its
    one-line help, listed in the widget's help), with the chosen one's help as a caption. The
    choice is kept for the browser session, so the other pages open the same audit session."""
    choices = list(helps)
    choice = st.selectbox(
        "Ranking", choices, index=choices.index(default), format_func=ranking_name, key=key,
        bind="query-params", persist_state="session",
        help="\n".join(f"- **{ranking_name(k)}**: {text}" for k, text in helps.items()),
    )
    st.caption(helps[choice])
    return choice


def review_buttons(
    on_decide: Callable[[str], None], on_undo: Callable[[], None], can_undo: bool,
    enabled: bool = True,
) -> None:
    """Relabel (L), Remove (X), Keep (K), Undo (U): C and R are reserved by Streamlit. Not
    `enabled`: drawn greyed out, without shortcuts (the card before the Setup step ends)."""
    relabel, remove, keep, undo = st.columns(4)
    key = "act" if enabled else "wait"  # both rows can be drawn in one run (different keys)

    def shortcut(letter: str) -> str | None:
        return letter if enabled else None

    relabel.button("Relabel", shortcut=shortcut("l"), on_click=on_decide, args=("relabel",),
                   type="primary", width="stretch", key=f"{key}_relabel", disabled=not enabled)
    remove.button("Remove", shortcut=shortcut("x"), on_click=on_decide, args=("remove",),
                  width="stretch", key=f"{key}_remove", disabled=not enabled)
    keep.button("Keep", shortcut=shortcut("k"), on_click=on_decide, args=("keep",),
                width="stretch", key=f"{key}_keep", disabled=not enabled)
    undo.button("Undo", shortcut=shortcut("u"), on_click=on_undo, width="stretch",
                key=f"{key}_undo", disabled=not (can_undo and enabled))


def preview_text(what: str, preview: object) -> None:
    """One line from an influence_core.Preview: the predicted change of mean test loss and the
    test predictions that flip."""
    if preview.refused:  # a non-finite step: say why the button will refuse
        return st.caption(f"**{what}**: {preview.refused}")
    loss_change, flips = preview.test_loss_change, preview.flips
    shown = ", ".join(f"#{i} {b}→{a}" for i, b, a in
                      zip(flips["index"][:6], flips["before"][:6], flips["after"][:6]))
    more = f" (+{len(flips) - 6} more)" if len(flips) > 6 else ""
    st.caption(f"**{what}** (on {preview.evaluated} test images): test loss {loss_change:+.4f}; "
               f"{len(flips)} prediction(s) flip" + (f": {shown}{more}" if len(flips) else ""))


def explore_filter_ui(
    class_names: list[str], keys: tuple[str, str, str], on_change: Callable[[], None]
) -> tuple[int | None, bool, tuple[float, float]]:
    """Test-grid filters: true class (None: all), misclassified only, confidence range."""
    label_key, wrong_key, conf_key = keys
    left, middle, right = st.columns([2, 2, 3], vertical_alignment="bottom")
    label = left.selectbox("Class", ["all", *class_names], key=label_key, bind="query-params",
                           on_change=on_change)
    wrong = middle.toggle("Misclassified only", key=wrong_key, bind="query-params",
                          on_change=on_change)
    confidence = right.slider("Confidence", 0.0, 1.0, (0.0, 1.0), step=0.05, key=conf_key,
                              on_change=on_change)
    return None if label == "all" else class_names.index(label), wrong, confidence


def report_figures(reports: dict[str, dict], prefixes: tuple[str, ...], figure: str) -> int:
    """Each report whose name starts with one of `prefixes`: its `figure` (plotly) and its
    Markdown table in an expander, labelled with where it came from. Returns how many."""
    chosen = {name: r for name, r in reports.items() if name.startswith(prefixes)}
    for name, report in chosen.items():
        source = SOURCES.get(report.get("source", ""), "")
        st.markdown(f"**{name}** · {source}")
        if figure in report["figures"]:
            st.plotly_chart(report["figures"][figure], width="stretch", key=f"fig_{name}")
        if report["markdown"]:
            with st.expander(f"Table: {name}"):
                st.markdown(report["markdown"])
    return len(chosen)


SOURCES = {"shipped": "shipped with the app (docs/reports)",
           "yours": "yours ($INFLUENCE_AUDIT_HOME/reports)"}


def unlearning_chart(frame: object, name: str) -> None:
    """Grouped bars: KL ratio to retraining per edit set and model (log scale, 1 = untouched)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for model, rows in frame.groupby("model", sort=False):
        fig.add_trace(go.Bar(name=model, x=rows["edit"] + ": " + rows["set"], y=rows["KL ratio"],
                             customdata=rows[["size", "agreement"]],
                             hovertemplate="%{x}<br>KL ratio %{y:.2f}<br>size %{customdata[0]}"
                                           "<br>agreement %{customdata[1]:.2%}<extra></extra>"))
    fig.add_hline(y=1.0, line_dash="dot", annotation_text="untouched model")
    fig.update_layout(barmode="group", height=360, yaxis_type="log",
                      yaxis_title="KL(untouched‖retrained) / KL(model‖retrained)",
                      margin={"l": 10, "r": 10, "t": 30, "b": 10}, legend={"orientation": "h"})
    st.plotly_chart(fig, width="stretch", key=f"unlearning_{name}")


def bar_chart(values: dict[str, float], title: str, log: bool = False) -> None:
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=list(values), y=list(values.values())))
    fig.update_layout(height=300, title=title, yaxis_type="log" if log else "linear",
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    st.plotly_chart(fig, width="stretch")


def histogram(values: object, title: str, log10: bool = False) -> None:
    import numpy as np
    import plotly.graph_objects as go

    x = np.log10(np.clip(values, 1e-12, None)) if log10 else values
    fig = go.Figure(go.Histogram(x=x, nbinsx=60))
    fig.update_layout(height=300, xaxis_title=title, yaxis_title="training examples",
                      margin={"l": 10, "r": 10, "t": 20, "b": 10})
    st.plotly_chart(fig, width="stretch")
