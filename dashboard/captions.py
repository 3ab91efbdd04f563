"""The captions under thumbnails, from the rows of a table (index, label, prediction). Labels
and predictions are class ids, except in `example_captions` (class names, as example_table
gives them). No Streamlit here."""

from __future__ import annotations

import pandas as pd


def example_captions(rows: pd.DataFrame) -> list[str]:
    """"#i · label · prediction" for the Dataset grid (names already in the rows)."""
    return [f"#{i} · {label} · {prediction}"
            for i, label, prediction in zip(rows["index"], rows["label"], rows["prediction"])]


def scored_captions(rows: pd.DataFrame, names: list[str], scores: list[float]) -> list[str]:
    """"#i · label y · pred p · score" (signed, 3 significant digits) for each row."""
    return _captions(rows, names, [f"{s:+.3g}" for s in scores])


def query_captions(rows: pd.DataFrame, names: list[str], scores: list[float] | None
                   ) -> list[str]:
    """"#i · label y · pred p · confidence" (a percentage), or the score when `scores` given."""
    if scores is None:
        return _captions(rows, names, [f"{c:.0%}" for c in rows["confidence"]])
    return scored_captions(rows, names, scores)


def _captions(rows: pd.DataFrame, names: list[str], tails: list[str]) -> list[str]:
    return [f"#{i} · label {names[y]} · pred {names[p]} · {t}"
            for i, y, p, t in zip(rows["index"], rows["label"], rows["prediction"], tails)]
