"""What the cleaning-rounds goal asks of a queue: the bracket of the goal among a report's
measured (queue, round) points, the interpolation between them, and the shipped reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from influence_core.evaluation.benchmarks_doc import Reports
from influence_core.evaluation.benchmarks_round_goal import goal_demand as demand_text
from influence_core.evaluation.cleaning_rounds import derived_figures, summarise
from influence_core.evaluation.round_goal import GOAL_GAP_CLOSED, goal_demand
from influence_core.evaluation.rounds_report import rounds_markdown

REPO = Path(__file__).resolve().parents[1]
REPORTS = REPO / "docs" / "reports"


def _result(points: dict[str, list[tuple[int, float]]], flips: int = 100,
            per_round: int = 50) -> dict:
    """One seed of 100 flips (noisy 0.8, clean 0.9), 2 rounds of 50 decisions; per queue, its
    rounds' (flips left, gap closed)."""
    noisy, clean = 0.8, 0.9
    queues = {q: [{"round": i + 1, "flips_fixed": 0, "flips_left": left,
                   "accuracy_newton": noisy, "accuracy_retrained": noisy + g * (clean - noisy),
                   "gap_closed_newton": 0.0, "gap_closed_retrained": g}
                  for i, (left, g) in enumerate(rows)] for q, rows in points.items()}
    seed = {"seed": 2, "flips": flips, "accuracy_noisy": noisy, "accuracy_clean": clean,
            "noise_floor": 0.001, "clean_disagreement": 0.01, "num_test": 1000, "queues": queues}
    result = {"setting": {"dataset": "d", "model": "m", "noise": 0.1, "noise_kind": "pair",
                          "budget": 0.05, "rounds": 2, "seeds": [2],
                          "decisions_per_round": per_round}, "seeds": [seed]}
    result["summary"] = summarise(result["seeds"])
    result["derived"] = derived_figures(result)
    return result


def test_the_goal_is_interpolated_between_the_points_that_bracket_it() -> None:
    d = goal_demand(_result({"app": [(60, 0.3), (20, 0.7)], "cleanlab": [(55, 0.4), (30, 0.6)],
                             "perfect": [(50, 0.5), (0, 1.0)]}))
    assert d["reached"] == {"queue": "perfect", "round": 2, "flips_left": 0, "gap_closed": 1.0}
    assert d["fewest_short"]["queue"] == "app" and d["fewest_short"]["flips_left"] == 20
    assert d["ordered"] is True
    # the line through (20, 0.7) and (0, 1.0) crosses 0.9 at 20 - 0.2 / 0.015 flips
    assert d["flips_left_at_target"] == pytest.approx(20 - 0.2 / 0.015)
    assert d["share_at_target"] == pytest.approx((100 - (20 - 0.2 / 0.015)) / 100)
    assert d["share_on_flips"] == pytest.approx({"app": 0.8, "cleanlab": 0.7, "perfect": 1.0})
    # the most flips left among the points at or above the goal brackets it
    d = goal_demand(_result({"app": [(60, 0.3), (40, 0.95)], "cleanlab": [(70, 0.2), (50, 0.5)]}))
    assert d["reached"]["flips_left"] == 40 and d["fewest_short"]["flips_left"] == 50
    assert d["flips_left_at_target"] == pytest.approx(50 - 0.4 * 10 / 0.45)


def test_no_estimate_without_a_point_above_the_goal_or_when_the_points_cross() -> None:
    d = goal_demand(_result({"app": [(60, 0.3), (20, 0.7)], "perfect": [(50, 0.6), (0, 0.85)]}))
    assert d["reached"] is None and d["ordered"] is None
    assert d["flips_left_at_target"] is None and d["share_at_target"] is None
    assert d["fewest_short"]["queue"] == "perfect"
    # a queue that left fewer flips closed less: no line to draw
    d = goal_demand(_result({"app": [(60, 0.3), (10, 0.8)], "cleanlab": [(55, 0.4), (30, 0.95)]}))
    assert d["ordered"] is False and d["flips_left_at_target"] is None


def test_the_paragraph_prints_each_judged_setting(tmp_path: Path) -> None:
    reports = {"rounds_a.json": _result({"app": [(60, 0.3), (20, 0.7)],
                                         "perfect": [(50, 0.5), (0, 1.0)]}),
               "rounds_b.json": _result({"app": [(60, 0.3), (20, 0.7)]})}
    for name, result in reports.items():
        (tmp_path / name).write_text(json.dumps(result))
    text = demand_text(Reports(tmp_path), sorted(reports), gap_min=0.01)
    assert "| d/m, 0.1 pair | app, round 2: 0.700 with 20 flips left | perfect, round 2: 1.000 " \
           "with 0 flips left | 7 flips left, so 0.933 of the decisions on flips | " \
           "0.800 / n/a / 1.000 |" in text
    assert "no estimate: no measured queue reached it | 0.800 / n/a / n/a |" in text
    assert demand_text(Reports(tmp_path), sorted(reports), gap_min=0.2) == ""  # gap 0.1
    # each report's own text says the same
    reports["rounds_a.json"]["command"] = "evaluate rounds"
    md = rounds_markdown(reports["rounds_a.json"])
    assert "Share of the decisions that landed on a flip, both rounds: app 0.800, " \
           "perfect 1.000. Closing 0.9 of the gap: about 7 flips left, 0.933 of the " \
           "decisions on flips (a line between app round 2 (0.700, 20 flips left) and " \
           "perfect round 2 (1.000, 0 flips left))." in md


def test_the_goal_constant_is_the_one_in_targets_and_shipped_reports_hold_it() -> None:
    targets = json.loads((REPORTS / "targets.json").read_text())
    assert targets["rounds"]["goal_gap_closed_min"] == GOAL_GAP_CLOSED
    names = [p for p in sorted(REPORTS.glob("rounds_*.json"))
             if not p.name.endswith(".plotly.json")]
    assert names
    for path in names:
        report = json.loads(path.read_text())
        assert report["derived"] == derived_figures(report), path.name
