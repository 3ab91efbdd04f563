"""Plain pandas views of the tables the pages show: filters, neighbours, report tables.
No Streamlit here: these are pure functions of their arguments."""

from __future__ import annotations

import pandas as pd


def filter_examples(frame: pd.DataFrame, label: str | None, only_wrong: bool) -> pd.DataFrame:
    """Rows of an example_table of class `label` (a name; None: all), mispredicted only or not."""
    if label is not None:
        frame = frame[frame["label"] == label]
    return frame[~frame["correct"]] if only_wrong else frame


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
    """One row per (report, estimator): LDS, from lds_* and quick_* reports, with where the
    report came from (shipped in docs/reports, or yours)."""
    rows = []
    for name, report in reports.items():
        result = report["result"]
        if isinstance(result.get("lds"), dict) and "lds" in result["lds"]:  # quick_* nests it
            result = result["lds"]
        rows += [(name, report.get("source", ""), k, v) for k, v in result.get("lds", {}).items()
                 if isinstance(v, (int, float))]
    return pd.DataFrame(rows, columns=["report", "source", "estimator", "LDS"]).sort_values(
        "LDS", ascending=False)


UNLEARNING_MODELS = {"newton": "Newton step", "refined": "refined (3 steps)",
                     "refined_full": "refined (full objective)",
                     "noise_floor": "retrained, other seed (noise floor)"}


def unlearning_table(result: dict) -> pd.DataFrame:
    """One row per (edit kind, edit set, model) of a verify-unlearning report: the KL ratio
    KL(untouched || retrained) / KL(model || retrained) (higher: closer to retraining), the
    agreement with the retrained model's predictions and the set's size."""
    rows = []
    for kind in ("relabel", "remove"):
        for name, edit in result.get(kind, {}).get("sets", {}).items():
            base = edit.get("nothing", {}).get("kl")
            for key, label in UNLEARNING_MODELS.items():
                kl = edit.get(key, {}).get("kl")
                if base is None or kl is None:
                    continue
                rows.append((kind, name, edit.get("size"), label,
                             base / kl if kl > 0 else float("inf"), edit[key].get("agreement")))
    return pd.DataFrame(rows, columns=["edit", "set", "size", "model", "KL ratio", "agreement"])
