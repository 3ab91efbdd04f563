"""`bench faults`: the fault runner agrees with the shipped report, every shipped row is a clean
refusal or a conversion with nothing lost, and concurrent reviewers on one decision log lose,
duplicate and raise nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from influence_core.cli.faults import run_faults
from influence_core.config import recipe
from influence_core.data.registry import load_problem
from influence_core.evaluation import fault_inputs
from influence_core.evaluation.faults_load import concurrent_review, same_example_race

REPORT = Path(__file__).resolve().parents[1] / "docs" / "reports" / "faults.json"
AGREE = ["pickle carrying code", "noise fraction 1.0", "corrupted decision log (app)"]  # fast
REQUIRED = ["corrupt image", "truncated image", "empty image", "decompression bomb",
            "16-bit grey image", "RGBA image", "palette image", "CMYK image",
            "checkpoint of another architecture", "pickle carrying code", "truncated checkpoint",
            "NaN-weight checkpoint", "label out of range", "noise fraction 1.0",
            "noise fraction -0.1", "damping <= 0 (core)", "NaN loss during training",
            "artifact folder from another version", "corrupted decision log (CLI)",
            "full disk while saving a checkpoint", "full disk during precompute",
            "full decision log"]
LOAD_SECONDS = 8.0  # how long the 8 sessions click


@pytest.fixture(scope="module")
def shipped() -> dict:
    return json.loads(REPORT.read_text())


def test_the_runner_and_the_shipped_report_agree(tmp_path: Path, shipped: dict) -> None:
    ran = run_faults(tmp_path / "home", AGREE, load_seconds=0)
    by_class = {r["class"]: r for r in shipped["rows"]}
    assert [r["class"] for r in ran["rows"]] == AGREE
    for r in ran["rows"]:
        keep = ("where", "expected", "got", "message", "verdict", "lost", "converted_to")
        assert {k: r[k] for k in keep} == {k: by_class[r["class"]][k] for k in keep}


def test_the_code_carrying_pickle_would_really_run_its_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = fault_inputs.code_pickle(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)  # what a careless loader does
    assert marker.exists()


def test_every_shipped_row_is_refused_cleanly_or_converted_with_nothing_lost(shipped: dict
                                                                              ) -> None:
    rows = shipped["rows"]
    assert {r["class"] for r in rows} >= set(REQUIRED) and shipped["n_classes"] == len(rows)
    bad = [r["class"] for r in rows
           if r["verdict"] not in ("refused cleanly", "converted") or r["lost"] or not r["clean"]]
    assert not bad
    converted = {r["class"] for r in rows if r["verdict"] == "converted"}
    assert converted == {"16-bit grey image", "RGBA image", "palette image", "CMYK image"}
    assert next(r for r in rows if r["class"] == "16-bit grey image")["converted_to"].count(
        "pixel (0, 0) became 128")  # scaled by 255/65535, not clipped to 255
    load = shipped["load"]
    c = load["concurrent"]
    assert c["sessions"] == 8 and c["decisions"] > 0
    assert c["lost"] == c["duplicated"] == c["unreported_rows"] == c["errors"] == 0
    assert all(load["same_example"][k] for k in ("both_logged", "later_wins",
                                                  "other_session_sees_it"))


@pytest.fixture
def problem(artifacts_home: Path) -> object:
    return load_problem(recipe("digits", "mlp", epochs=2))


def test_eight_concurrent_reviewers_lose_and_duplicate_nothing(problem: object,
                                                               tmp_path: Path) -> None:
    c = concurrent_review(problem, tmp_path, sessions=8, seconds=LOAD_SECONDS)
    assert c["first_errors"] == [] and c["errors"] == 0
    assert c["decisions"] > 8 and c["lost"] == 0 and c["duplicated"] == 0
    assert c["unreported_rows"] == 0  # every row in the log was reported to one clicker
    assert c["p95_ms"] >= c["p50_ms"] > 0


def test_two_annotators_on_one_example_at_once_the_later_wins(problem: object,
                                                               tmp_path: Path) -> None:
    race = same_example_race(problem, tmp_path)
    assert race == {"both_logged": True, "later_wins": True, "other_session_sees_it": True,
                    "refusals": []}
