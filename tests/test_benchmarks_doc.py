"""docs/benchmarks.md and the README's results block: generated from docs/reports, and every
number printed is a value of a report the section links (checked here by a parser that does not
use the generator)."""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path

import pytest

from influence_core.evaluation.bench_query import derived_figures as query_figures
from influence_core.evaluation.benchmarks_doc import (
    END,
    START,
    render_doc,
    render_summary,
    replace_block,
    run,
)
from influence_core.evaluation.lds import ceiling_figures, lds_ceiling
from influence_core.evaluation.unlearning_report import derived_figures as unlearning_figures

ROOT = Path(__file__).resolve().parents[1]
REPORTS, DOC = ROOT / "docs" / "reports", ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"

# a number not glued to a word (bf16, p95, AVX2 are names), with thousands separators, a sign,
# an exponent and an optional percent sign
NUMBER = re.compile(r"(?<![\w.])(-?)((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?:[eE]([-+]?\d+))?)"
                    r"(%?)(?!\w|\.\d)")


def _values(obj, out: list[float]) -> list[float]:
    """Every number of a report: values and numeric keys, leaving out '_'-prefixed raw arrays
    (per-query values, curves) that would match almost anything."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k.startswith("_"):
                continue
            with contextlib.suppress(ValueError):
                out.append(float(k))
            _values(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _values(v, out)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out.append(float(obj))
    return out


def _prose(text: str) -> str:
    """Text whose numbers are claims: no headings, code spans (commands, file names) or link
    targets."""
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.DOTALL)
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    text = re.sub(r"`[^`]*`", " ", text)
    return re.sub(r"\]\([^)]*\)", "] ", text)


def unmatched(text: str, values: list[float]) -> list[str]:
    """Printed numbers of `text` that equal no value at their printed precision."""
    bad = []
    for m in NUMBER.finditer(_prose(text)):
        sign, body, decimals, exponent, percent = m.groups()
        printed = float(body.replace(",", "")) * (-1 if sign else 1)
        tol = 0.5 * 10.0 ** -len(decimals or "") * 10.0 ** int(exponent or 0) * (1 + 1e-9)
        scales = (100.0, 1.0) if percent else (1.0,)
        if not any(math.isclose(v * s, printed, abs_tol=tol + 1e-12)
                   for v in values for s in scales):
            bad.append(m.group(0))
    return bad


def github_slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9_\- ]", "", heading.strip().lower()).replace(" ", "-")


def sections(doc: str) -> dict[str, str]:
    """anchor -> section text (heading to the next '## ')."""
    parts = re.split(r"^## ", doc, flags=re.MULTILINE)[1:]
    return {github_slug(p.splitlines()[0]): p for p in parts}


def cited_values(section: str, folder: Path = REPORTS) -> list[float]:
    names = re.findall(r"\]\(reports/([^)]+\.json)\)", section)
    assert names, "a section must link the reports it prints"
    out: list[float] = []
    for name in names:
        _values(json.loads((folder / name).read_text()), out)
    return out


def check_doc(doc: str) -> dict[str, list[str]]:
    problems = {a: unmatched(s, cited_values(s)) for a, s in sections(doc).items()}
    return {a: p for a, p in problems.items() if p}


def readme_block() -> str:
    text = README.read_text() if README.exists() else ""
    if START in text and END in text:
        return text[text.index(START) + len(START): text.index(END)]
    return render_summary(REPORTS)


# (a) generated = committed

def test_benchmarks_md_is_generated_from_the_reports():
    assert DOC.read_text() == render_doc(REPORTS), "run `python -m influence_core report`"


def test_readme_block_is_generated_from_the_reports():
    text = README.read_text()
    if START not in text:
        pytest.skip("README has no results markers")
    assert replace_block(text, render_summary(REPORTS)) == text


def test_check_mode_reports_a_stale_page(tmp_path, capsys):
    out, readme = tmp_path / "benchmarks.md", tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\nrest\n")
    assert run(REPORTS, out, readme, check=True) == 1
    assert run(REPORTS, out, readme, check=False) == 0
    assert out.read_text() == render_doc(REPORTS)
    assert readme.read_text().startswith("intro\n") and readme.read_text().endswith("rest\n")
    assert run(REPORTS, out, readme, check=True) == 0
    out.write_text(out.read_text().replace("0.048", "0.043", 1))
    assert run(REPORTS, out, readme, check=True) == 1
    assert "-" in capsys.readouterr().out


# (b) every number of a section is a value of a report it links

def test_every_number_in_benchmarks_md_is_in_a_cited_report():
    assert check_doc(DOC.read_text()) == {}


def test_every_cited_report_exists_and_sections_have_stable_anchors():
    doc = DOC.read_text()
    for anchor, section in sections(doc).items():
        for name in re.findall(r"\]\(reports/([^)]+)\)", section):
            assert (REPORTS / name).is_file(), name
        assert f"(#{anchor})" in doc  # the table of contents links it


@pytest.mark.parametrize("old, new", [("0.048 of Kronfluence", "0.043 of Kronfluence"),
                                      ("| 42.1 |", "| 42.7 |"),
                                      ("0.412 against", "0.612 against"),
                                      ("99.28%", "99.82%")])
def test_a_hand_edited_number_is_caught(old, new):
    doc = DOC.read_text()
    assert old in doc
    assert check_doc(doc.replace(old, new, 1)) != {}


def test_number_parser():
    values = [0.9928, 60000, 0.0477, 4.03e-05, 1.0, 0.1]
    assert unmatched("agreement 99.28%, 60,000 images, ratio 0.048, 4.03e-05, 10%", values) == []
    assert unmatched("bf16 p95 AVX2 `--subsets 100` [x](reports/a_3.json)", values) == []
    assert unmatched("ratio 0.049 and -1", values) == ["0.049", "-1"]


# (c) the README's summary table: every number is in the reports of the section it links

def test_every_number_in_the_readme_summary_is_in_the_linked_sections_reports():
    docs = sections(DOC.read_text())
    rows = [line for line in readme_block().splitlines() if line.startswith("| ")][1:]
    assert 6 <= len(rows) <= 10
    for row in rows:
        anchor = re.search(r"\(docs/benchmarks\.md#([\w-]+)\)", row).group(1)
        assert anchor in docs, anchor
        cells = row.rsplit("|", 2)[0]  # leave out the details link
        assert unmatched(cells, cited_values(docs[anchor])) == [], row


# (d) the derived figures the commands store

def test_unlearning_derived_figures():
    def model(kl, acc=0.9):
        return {"kl": kl, "accuracy": acc}

    result = {
        "remove": {"sets": {"top": {"nothing": model(0.02), "newton": model(0.01),
                                    "retrained": model(0.0), "noise_floor": model(0.04)}},
                   "test_loss_change": {"top": {"predicted": 0.001, "actual": 0.1},
                                        "rand": {"predicted": -0.002, "actual": 0.02},
                                        "zero": {"predicted": 0.5, "actual": 0.0}}},
        "relabel": {"sets": {"repair": {"nothing": model(0.3, 0.90), "newton": model(0.1, 0.91),
                                        "retrained": model(0.0, 0.94)}}},
    }
    d = unlearning_figures(result)
    assert d["remove"]["kl_ratio"]["top"] == {"newton": 2.0, "noise_floor": 0.5}
    assert d["remove"]["kl_closed"]["top"] == {"newton": 0.5, "noise_floor": -1.0}
    assert d["remove"]["predicted_over_actual"] == pytest.approx({"top": 0.01, "rand": -0.1})
    assert d["remove"]["prediction_scale_median"] == pytest.approx(0.055)
    assert d["remove"]["sign_agreement"] == 0.5
    assert d["relabel"]["kl_ratio"]["repair"] == pytest.approx({"newton": 3.0})
    assert d["relabel"]["accuracy_gain"]["repair"] == pytest.approx(0.04)


def test_query_derived_figures():
    report = {"index_file_bytes": 2_000_000, "index_ram_bytes": 4_000_000,
              "seconds_per_epoch": 10.0, "precompute": {"timings": {"total": 35.0}}}
    assert query_figures(report) == {"index_file_mb": 2.0, "index_ram_mb": 4.0,
                                     "precompute_epochs": 3.5}
    report["seconds_per_epoch"] = None
    assert "precompute_epochs" not in query_figures(report)


def test_lds_ceiling_figures():
    assert lds_ceiling(0.25, 1) == pytest.approx(0.5)
    assert lds_ceiling(0.25, 2) == pytest.approx(math.sqrt(0.5 / 1.25))
    assert lds_ceiling(-0.1, 2) == 0.0
    result = {"ground_truth": {"seed_to_seed_spearman": 0.25, "lds_ceiling": 0.5},
              "lds": {"index": 0.2, "random": 0.0}}
    d = ceiling_figures(result)
    assert d["lds_ceiling_one_seed"] == pytest.approx(0.5)
    assert d["share_of_ceiling"] == pytest.approx({"index": 0.4, "random": 0.0})


def test_shipped_reports_hold_their_derived_figures():
    for path in sorted(REPORTS.glob("unlearning-*.json")):
        report = json.loads(path.read_text())
        assert report["derived"] == unlearning_figures(report), path.name
    for path in sorted(REPORTS.glob("bench_query_*.json")):
        report = json.loads(path.read_text())
        assert report["derived"] == query_figures(report), path.name
    for path in sorted(REPORTS.glob("lds_*.json")):
        report = json.loads(path.read_text())
        if "ground_truth" in report:
            assert report["derived"] == ceiling_figures(report), path.name
