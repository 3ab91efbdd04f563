"""Dataset: browse the training or test split as a paginated grid of captioned thumbnails."""

import pandas as pd
import streamlit as st

from dashboard import captions, frames, images, state, widgets
from influence_core import INPUT_ERRORS

PAGE_SIZE = 24  # thumbnails per grid page (streamlit#12090: many elements render slowly)

sel = state.selection()
st.title("Dataset")
try:
    problem = state.get_problem(sel.dataset, sel.model, sel.data_root, sel.checkpoint)
except INPUT_ERRORS as exc:
    st.error(f"Cannot load {sel.dataset} / {sel.model}: {exc}")
    st.stop()

skipped = problem.train.skipped + problem.test.skipped  # image folders: unreadable files
if skipped:  # and symlinks that point outside the folder (never followed)
    st.warning(f"{len(skipped)} unreadable image file(s) or symlink(s) to outside the folder "
               "were skipped.")
    st.dataframe(pd.DataFrame(skipped, columns=["file", "reason"]), height=150)

accuracy, train_size, test_size, classes = st.columns(4)
accuracy.metric("Test accuracy", f"{problem.meta['test_accuracy']:.1%}")
train_size.metric("Training examples", f"{len(problem.train):,}")
test_size.metric("Test examples", f"{len(problem.test):,}")
classes.metric("Classes", problem.train.num_classes)

split, label, only_wrong = widgets.grid_filter_ui(
    problem.train.class_names, (state.GRID_SPLIT, state.GRID_LABEL, state.GRID_WRONG),
    on_change=state.reset_page(state.GRID_PAGE),
)
table = state.examples(sel.dataset, sel.model, sel.data_root, sel.checkpoint, split, problem)
frame = frames.filter_examples(table, label, only_wrong)
if frame.empty:
    st.info("No example matches these filters.")
    st.stop()

start, stop = widgets.pager_ui(len(frame), PAGE_SIZE, key=state.GRID_PAGE)
rows = frame.iloc[start:stop]
pngs = state.thumbnails(sel.dataset, sel.data_root, split, tuple(rows["index"].tolist()))
widgets.tiles(pngs, captions.example_captions(rows), width=images.THUMB_PX)
