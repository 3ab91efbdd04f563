"""Where the Evaluate page finds reports: those that ship in docs/reports and the user's own in
$INFLUENCE_AUDIT_HOME/reports, matched to the selected problem by name. No Streamlit here:
dashboard.state caches `problem_reports` (re-read every 30 s)."""

from __future__ import annotations

from pathlib import Path

from influence_core import artifacts_root, load_reports

SHIPPED_REPORTS = Path(__file__).resolve().parents[1] / "docs" / "reports"
REPORT_KINDS = ("lds_", "mislabel_", "unlearning_", "quick_", "rounds_")


def reports_folder() -> Path:
    """The user's own reports ($INFLUENCE_AUDIT_HOME/reports); the quick evaluation writes here."""
    return artifacts_root() / "reports"


def for_problem(name: str, dataset: str, model: str) -> bool:
    """Is the report `name` (<kind>_<dataset>_<model>[_variant], '-' or '_') about this problem?"""
    name, tag = name.replace("-", "_"), f"{dataset}_{model}"
    rest = next((name[len(k):] for k in REPORT_KINDS if name.startswith(k)), None)
    return rest is not None and (rest == tag or rest.startswith(tag + "_"))


def problem_reports(dataset: str, model: str) -> dict[str, dict]:
    """This problem's reports: the shipped ones (source "shipped") and the user's own ("yours";
    the same name wins)."""
    found = {}
    for source, folder in (("shipped", SHIPPED_REPORTS), ("yours", reports_folder())):
        for name, report in load_reports(folder).items():
            if for_problem(name, dataset, model):
                found[name] = {**report, "source": source}
    return found
