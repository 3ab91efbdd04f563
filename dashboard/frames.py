"""Plain pandas views of the tables the pages show: filters, neighbours, report tables.
No Streamlit here: these are pure functions of their arguments."""

from __future__ import annotations

import pandas as pd


def filter_queue(frame: pd.DataFrame, label: int | None, differs: bool) -> pd.DataFrame:
    if label is not None:
        frame = frame[frame["label"] == label]
    return frame[frame["prediction"] != frame["label"]] if differs else frame


def neighbours(rows: pd.DataFrame, i: int) -> tuple[int | None, int | None]:
    ids = rows["index"].tolist()
    if i not in ids:
        return None, (ids[0] if ids else None)
    at = ids.index(i)
    return (ids[at - 1] if at else None), (ids[at + 1] if at + 1 < len(ids) else None)


def filter_tests(frame: pd.DataFrame, label: int | None, wrong: bool,
                 confidence: tuple[float, float]) -> pd.DataFrame:
    keep = frame["confidence"].between(*confidence)
    if label is not None:
        keep &= frame["label"] == label
    if wrong:
        keep &= frame["prediction"] != frame["label"]
    return frame[keep]


def lds_table(reports: dict[str, dict]) -> pd.DataFrame:
    """One row per (report, estimator): LDS, from lds_* and quick_* reports."""
    rows = []
    for name, report in reports.items():
        result = report["result"]
        if isinstance(result.get("lds"), dict) and "lds" in result["lds"]:  # quick_* nests it
            result = result["lds"]
        rows += [(name, k, v) for k, v in result.get("lds", {}).items()
                 if isinstance(v, (int, float))]
    return pd.DataFrame(rows, columns=["report", "estimator", "LDS"]).sort_values(
        "LDS", ascending=False)


