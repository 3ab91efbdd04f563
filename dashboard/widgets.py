"""Render helpers and `*_ui()` input groups. They take and return plain values; the widget keys
(and the query parameters they are bound to) come from dashboard.state."""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd
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


def example_grid(images: list[bytes], rows: pd.DataFrame, width: int, columns: int = 8) -> None:
    """Thumbnails `width` pixels wide captioned "#index · label · prediction", `columns` a row."""
    captions = [
        f"#{i} · {label} · {prediction}"
        for i, label, prediction in zip(rows["index"], rows["label"], rows["prediction"])
    ]
    for start in range(0, len(images), columns):
        for col, image, caption in zip(
            st.columns(columns), images[start : start + columns], captions[start : start + columns]
        ):
            col.image(image, caption=caption, width=width)
