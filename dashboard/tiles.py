"""Thumbnails with their captions, ready for widgets.tiles: the cached PNGs and tables come
from dashboard.state, the caption text from dashboard.captions."""

from __future__ import annotations

import pandas as pd

from dashboard import captions, state
from dashboard.workspace import Selection, Workspace
from influence_core import load_dataset, train_rows


def train_tiles(sel: Selection, ws: Workspace, idx: list[int], scores: list[float]
                ) -> tuple[list[bytes], list[str]]:
    """Thumbnails and "#i · label · pred · score" captions of training examples (current
    labels, after relabels; the base model's predictions)."""
    rows = train_rows(state.audit_state(ws), state.train_preds(ws.key, ws), idx)
    return (state.thumbnails(sel.dataset, sel.data_root, "train", tuple(idx)),
            captions.scored_captions(rows, ws.problem.train.class_names, scores))


def test_tiles(sel: Selection, frame: pd.DataFrame, idx: list[int], scores: list[float] | None
               ) -> tuple[list[bytes], list[str]]:
    """Thumbnails and "#i · label · pred · confidence (or score)" captions of test examples;
    `frame` is state.test_frame."""
    train, _ = load_dataset(sel.dataset, sel.data_root)  # class names (cached per process)
    return (state.thumbnails(sel.dataset, sel.data_root, "test", tuple(idx)),
            captions.query_captions(frame.iloc[idx], train.class_names, scores))
