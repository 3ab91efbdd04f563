"""Report files: <folder>/<name>.json, <name>.md and <name>.<figure>.plotly.json / .html,
written by the experiments and read by the app's Evaluate page."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(folder: Path | str, name: str, result: dict, markdown: str,
                 figures: dict[str, object]) -> Path:
    """Write result (JSON), a Markdown table and plotly figures (JSON for the app, HTML to open)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2, default=float))
    (folder / f"{name}.md").write_text(markdown)
    for key, fig in figures.items():
        (folder / f"{name}.{key}.plotly.json").write_text(fig.to_json())
        fig.write_html(folder / f"{name}.{key}.html", include_plotlyjs="cdn")
    return folder / f"{name}.json"


def load_reports(folder: Path | str) -> dict[str, dict]:
    """Every report in `folder`: name -> {'result': dict, 'markdown': str, 'figures': {key:
    plotly Figure}}. An absent folder gives {}."""
    import plotly.io as pio

    folder = Path(folder)
    reports: dict[str, dict] = {}
    if not folder.is_dir():
        return reports
    for path in sorted(folder.glob("*.json")):
        if path.name.endswith(".plotly.json"):
            continue
        name = path.stem
        md = folder / f"{name}.md"
        figures = {
            f.name[len(name) + 1: -len(".plotly.json")]: pio.from_json(f.read_text())
            for f in sorted(folder.glob(f"{name}.*.plotly.json"))
        }
        result = json.loads(path.read_text())
        figures.update(_redrawn(name, result))
        reports[name] = {"result": result,
                         "markdown": md.read_text() if md.is_file() else "", "figures": figures}
    return reports


def _redrawn(name: str, result: dict) -> dict[str, object]:
    """Figures drawn again from a report's own numbers (so a report written by an older version
    shows today's figure): the cleaning rounds' accuracy per round. A report without the
    numbers keeps its stored figure."""
    if not name.startswith("rounds_"):
        return {}
    from .rounds_report import rounds_figure

    try:
        return {"accuracy": rounds_figure(result)}
    except (KeyError, TypeError, ValueError, IndexError):
        return {}
