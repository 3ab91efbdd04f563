"""`evaluate rounds` on a tiny digits setting: the report's numbers agree with each other."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from influence_core.audit.rounds import QUEUE_RANKING, ROUND_RANKINGS
from influence_core.cli.main import main
from influence_core.evaluation.cleaning_rounds import QUEUES, derived_figures, summarise
from influence_core.evaluation.round_pruning import PRUNE_FRACTIONS

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "dashboard" / "app.py")
BUDGET, ROUNDS = 0.01, 2  # 14 decisions per round on digits' 1437 training images
GAP_TOL = 1e-9


# long: one real run, then every number of its report checked against the others, then the page
def test_evaluate_rounds_writes_a_consistent_report(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFLUENCE_AUDIT_HOME", str(tmp_path / "home"))
    out = tmp_path / "home" / "reports"  # the default folder, which the Evaluate page reads
    argv = ["evaluate", "rounds", "--dataset", "digits", "--model", "mlp", "--noise", "0.1",
            "--noise-kind", "pair", "--budget", str(BUDGET), "--rounds", str(ROUNDS),
            "--seeds", "0", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "rounds_digits_mlp_pair_0.1.json").read_text())
    assert (out / "rounds_digits_mlp_pair_0.1.md").is_file()
    assert (out / "rounds_digits_mlp_pair_0.1.accuracy.plotly.json").is_file()
    assert str(tmp_path) not in result["command"]  # paths as typed from the repository
    [seed] = result["seeds"]
    per_round = result["setting"]["decisions_per_round"]
    assert per_round == round(BUDGET * seed["num_train"])
    noisy, clean = seed["accuracy_noisy"], seed["accuracy_clean"]
    assert seed["noise_floor"] == pytest.approx(abs(clean - seed["accuracy_clean_other_seed"]))
    for queue in QUEUES:
        rows = seed["queues"][queue]
        assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
        left = seed["flips"]
        for r in rows:
            assert 0 <= r["flips_fixed"] <= per_round
            assert r["flips_left"] == left - r["flips_fixed"]  # the annotator only repairs
            left = r["flips_left"]
            for kind in ("newton", "retrained"):
                want = (r[f"accuracy_{kind}"] - noisy) / (clean - noisy)
                assert r[f"gap_closed_{kind}"] == pytest.approx(want, abs=GAP_TOL)
    assert seed["queues"]["app"][0]["flips_fixed"] > seed["queues"]["random"][0][
        "flips_fixed"]  # a ranking beats chance at 1% inspected
    # fewer decisions than flips: the perfect queue repairs one with every decision
    assert [r["flips_fixed"] for r in seed["queues"]["perfect"]] == [per_round] * ROUNDS
    # every later app round counts what each round ranking would have found; the one the
    # queue followed found what the annotator fixed
    later = seed["queues"]["app"][1]
    assert set(later["queue_candidates"]) == set(ROUND_RANKINGS)
    assert later["queue_candidates"][QUEUE_RANKING] == later["flips_fixed"]
    assert all(0 <= v <= per_round for v in later["queue_candidates"].values())
    assert "queue_candidates" not in seed["queues"]["app"][0]
    assert result["derived"]["queue_candidates"] == {
        k: v / per_round for k, v in later["queue_candidates"].items()}
    # the last app round also retrained leaving out the next suspects, the others did not
    last = seed["queues"]["app"][-1]
    assert list(last["pruned_retrains"]) == [f"{f:g}" for f in PRUNE_FRACTIONS]
    for f in PRUNE_FRACTIONS:
        pruned = last["pruned_retrains"][f"{f:g}"]
        assert pruned["left_out"] == round(f * seed["num_train"])
        assert 0 <= pruned["flips_left_out"] <= min(pruned["left_out"], last["flips_left"])
        assert pruned["gap_closed"] == pytest.approx((pruned["accuracy"] - noisy) /
                                                     (clean - noisy), abs=GAP_TOL)
        assert result["derived"]["pruned_retrains"][f"{f:g}"] == pruned["gap_closed"]
    assert not any("pruned_retrains" in r for q in QUEUES for r in seed["queues"][q][:-1])
    assert not any("pruned_retrains" in seed["queues"][q][-1] for q in QUEUES if q != "app")
    assert main(argv) == 0  # resumed: every training and decision is reused
    assert json.loads((out / "rounds_digits_mlp_pair_0.1.json").read_text())["seeds"] == [seed]
    # The Evaluate page draws it (its figure and its table)
    monkeypatch.setenv("INFLUENCE_AUDIT_ALLOWED_ROOTS", os.pathsep.join([str(Path.cwd()),
                                                                        str(tmp_path)]))
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("views/evaluate.py")
    at = at.run()
    assert not at.exception
    assert any("rounds_digits_mlp_pair_0.1" in md.value for md in at.markdown)
    st.cache_resource.clear()
    st.cache_data.clear()


def test_a_perfect_queue_with_budget_for_every_flip_retrains_the_clean_label_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once every flip is repaired, the retrain trains the recipe on the clean labels with the
    clean model's seed: the clean-label model, whose gap closed is exactly one."""
    monkeypatch.setenv("INFLUENCE_AUDIT_HOME", str(tmp_path / "home"))
    out = tmp_path / "reports"
    argv = ["evaluate", "rounds", "--dataset", "digits", "--model", "mlp", "--noise", "0.1",
            "--noise-kind", "uniform", "--budget", "0.12", "--rounds", "1", "--seeds", "0",
            "--queues", "perfect,random", "--out", str(out)]
    assert main(argv) == 0
    [seed] = json.loads((out / "rounds_digits_mlp_uniform_0.1.json").read_text())["seeds"]
    [perfect] = seed["queues"]["perfect"]
    assert perfect["flips_fixed"] == seed["flips"] and perfect["flips_left"] == 0
    assert perfect["accuracy_retrained"] == seed["accuracy_clean"]
    assert perfect["gap_closed_retrained"] == 1.0
    [random] = seed["queues"]["random"]
    assert random["flips_left"] > 0 and random["accuracy_retrained"] != seed["accuracy_clean"]


def _report(noisy: float, clean: float, final: dict[str, float]) -> dict:
    """A rounds report of one seed whose last round's retrained accuracies are `final`."""
    rows = {q: [{"round": 1, "flips_fixed": 1, "flips_left": 1, "accuracy_newton": noisy,
                 "accuracy_retrained": noisy, "gap_closed_newton": 0.0,
                 "gap_closed_retrained": 0.0},
                {"round": 2, "flips_fixed": 1, "flips_left": 0, "accuracy_newton": noisy,
                 "accuracy_retrained": acc, "gap_closed_newton": 0.0,
                 "gap_closed_retrained": (acc - noisy) / (clean - noisy)}]
            for q, acc in final.items()}
    seed = {"seed": 2, "flips": 3, "accuracy_noisy": noisy, "accuracy_clean": clean,
            "noise_floor": 0.001, "queues": rows}
    result = {"setting": {"dataset": "d", "model": "m", "noise": 0.1, "noise_kind": "pair",
                          "budget": 0.05, "rounds": 2, "seeds": [2], "decisions_per_round": 1},
              "seeds": [seed]}
    result["summary"] = summarise(result["seeds"])
    result["derived"] = derived_figures(result)
    return result


def test_the_rounds_goal_is_judged_only_where_the_gap_is_real(tmp_path: Path) -> None:
    from influence_core.evaluation.benchmarks_doc import Reports
    from influence_core.evaluation.benchmarks_rounds import rounds, summary_row

    targets = json.loads((REPO / "docs" / "reports" / "targets.json").read_text())
    (tmp_path / "targets.json").write_text(json.dumps(targets))
    cases = {"rounds_a.json": _report(0.80, 0.85, {"app": 0.849, "cleanlab": 0.84,
                                                    "random": 0.81, "perfect": 0.85}),  # met
             "rounds_b.json": _report(0.80, 0.85, {"app": 0.849, "cleanlab": 0.85,
                                                    "random": 0.81}),   # below cleanlab
             "rounds_c.json": _report(0.90, 0.905, {"app": 0.90, "cleanlab": 0.905,
                                                     "random": 0.90})}  # gap 0.005: not judged
    for name, result in cases.items():
        (tmp_path / name).write_text(json.dumps(result))
    assert cases["rounds_a.json"]["derived"]["final"]["app"]["gap_closed_retrained"] == \
        pytest.approx(0.98)
    assert cases["rounds_b.json"]["derived"]["app_minus_cleanlab"] == pytest.approx(-0.02)
    text = rounds(Reports(tmp_path))
    lines = {name: next(line for line in text.splitlines() if name in line) for name in cases}
    assert lines["rounds_a.json"].count("| met |") == 1
    assert "**not met**" in lines["rounds_b.json"]
    assert "not judged" in lines["rounds_c.json"]
    assert "Goal met in 1 of 2 judged settings" in text
    # 3 flips, 2 x 1 decisions: a perfect queue leaves 1; the perfect queue closes all the gap
    assert "| 0.980 | 0.800 | 0.200 | 1.000 |" in lines["rounds_a.json"]
    assert "| 3 | 1 | 0 / 0 / 0 / 0 |" in lines["rounds_a.json"]
    assert "| 0.200 | n/a |" in lines["rounds_b.json"]  # run without the perfect queue
    assert "| 0 / 0 / 0 / n/a |" in lines["rounds_b.json"]
    _, measured, note = summary_row(Reports(tmp_path))
    assert "met in 1 of 2" in note and "0.980" in measured
    # seed by seed: only the judged settings, app against cleanlab
    per_seed = text[text.index("Seed by seed"):text.index("What closing")]
    assert "| d/m, 0.1 pair | 2 | 0.980 / 0.800 | 0 / 0 | 1 of 1 | 1 of 1 |" in per_seed
    assert "| d/m, 0.1 pair | 2 | 0.980 / 1.000 | 0 / 0 | 0 of 1 | 1 of 1 |" in per_seed
    assert per_seed.count("| d/m, 0.1 pair |") == 2  # the setting without a real gap is left out
    demand = text[text.index("What closing"):text.index("### Later")]
    assert demand.count("| d/m, 0.1 pair |") == 2  # the same two settings, what 0.9 asks


def test_the_rounds_figure_draws_both_accuracies_from_the_reports_numbers(tmp_path: Path
                                                                           ) -> None:
    """Per queue, the retrained and the Newton-step accuracies (round 0: the noisy model);
    reports written with an older figure are drawn again from their numbers when read."""
    from influence_core.evaluation.reports import load_reports, write_report
    from influence_core.evaluation.rounds_report import rounds_figure

    result = _report(0.80, 0.85, {"app": 0.849, "cleanlab": 0.84, "random": 0.81})
    result["summary"]["app"][0]["accuracy_newton"] = 0.79  # a step that hurts
    fig = rounds_figure(result)
    traces = {t.name: t for t in fig.data}
    assert set(traces) == {f"{q}: {w}" for q in ("app", "cleanlab", "random")
                           for w in ("retrained", "Newton step only")}
    assert list(traces["app: retrained"].y) == [0.80, 0.80, 0.849]
    assert list(traces["app: Newton step only"].y) == [0.80, 0.79, 0.80]
    assert traces["app: retrained"].line.color == traces["app: Newton step only"].line.color
    assert traces["app: retrained"].line.color != traces["cleanlab: retrained"].line.color
    import plotly.graph_objects as go

    old = go.Figure(go.Scatter(x=[0, 1], y=[0.8, 0.84], name="app (retrained)"))
    write_report(tmp_path, "rounds_x", result, "", {"accuracy": old})
    shown = load_reports(tmp_path)["rounds_x"]["figures"]["accuracy"]
    assert {t.name for t in shown.data} == set(traces)
    write_report(tmp_path, "lds_x", {"lds": 0.1}, "", {"accuracy": old})  # other kinds: as stored
    assert [t.name for t in load_reports(tmp_path)["lds_x"]["figures"]["accuracy"].data] == [
        "app (retrained)"]


def test_the_round_ranking_choice_counts_settings_first_then_the_mean() -> None:
    from influence_core.evaluation.round_rankings import choose

    table = {"a": {"x": 0.5, "y": 0.4}, "b": {"x": 0.5, "y": 0.45}, "c": {"x": 0.1, "y": 0.9}}
    assert choose(table) == "x"  # best (ties included) in a and b; y has the higher mean
    table["b"]["y"] = 0.6
    assert choose(table) == "y"
    assert choose({}) is None


def test_candidate_fractions_average_only_rankings_every_round_counted() -> None:
    from influence_core.evaluation.round_rankings import candidate_fractions

    def seed(*rows: dict) -> dict:
        return {"queues": {"app": [{"round": 1, "decisions": 10}, *rows]}}

    old = seed({"round": 2, "decisions": 10, "queue_candidates": {"x": 4, "y": 6}})
    new = seed({"round": 2, "decisions": 10, "queue_candidates": {"x": 8, "y": 2, "z": 9}})
    assert candidate_fractions([new, old]) == pytest.approx({"x": 0.6, "y": 0.4})
    assert candidate_fractions([new]) == pytest.approx({"x": 0.8, "y": 0.2, "z": 0.9})
    assert candidate_fractions([seed()]) is None


def test_the_app_orders_later_rounds_by_the_development_choice() -> None:
    """The app's later-round ranking is what the committed development reports choose."""
    from influence_core.evaluation.round_rankings import DEV_PROBLEMS, choose, ranking_table

    reports = [json.loads(p.read_text()) for p in (REPO / "docs" / "reports").glob(
        "rounds_*.json") if not p.name.endswith(".plotly.json")]
    dev = ranking_table([r for r in reports if (r["setting"]["dataset"], r["setting"]["model"])
                         in DEV_PROBLEMS])
    assert len(dev) >= 6, "the development split's rounds reports are missing"
    assert choose(dev) == QUEUE_RANKING


def test_a_seed_already_in_the_report_of_the_same_setting_is_not_run_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a seed to a report reruns only the new seed; another setting, other queues or
    --rerun-seeds run every seed, --rerun-seeds with a list the listed ones."""
    from influence_core.evaluation import cleaning_rounds

    ran = []

    def fake_run_seed(dataset, model, noise, kind, seed, budget, rounds, data_root, progress,
                      queues):
        ran.append(seed)
        one = _report(0.80, 0.85, dict.fromkeys(queues, 0.80 + 0.01 * seed))["seeds"][0]
        return {**one, "seed": seed, "num_train": 1000, "num_test": 100,
                "clean_disagreement": 0.01,
                "queues": {q: one["queues"][q][:rounds] for q in queues}}

    monkeypatch.setattr(cleaning_rounds, "run_seed", fake_run_seed)
    out = tmp_path / "reports"
    base = ["evaluate", "rounds", "--dataset", "digits", "--model", "mlp", "--noise", "0.1",
            "--noise-kind", "pair", "--budget", "0.01", "--rounds", "2",
            "--queues", "app,random", "--out", str(out)]
    path = out / "rounds_digits_mlp_pair_0.1.json"
    assert main([*base, "--seeds", "2,3"]) == 0 and ran == [2, 3]
    first = json.loads(path.read_text())
    assert first["seeds_from_earlier_report"] == []
    assert main([*base, "--seeds", "2,3,4"]) == 0 and ran == [2, 3, 4]
    grown = json.loads(path.read_text())
    assert grown["seeds"][:2] == first["seeds"] and grown["setting"]["seeds"] == [2, 3, 4]
    assert grown["seeds_from_earlier_report"] == [2, 3]
    text = (out / "rounds_digits_mlp_pair_0.1.md").read_text()
    assert "Seeds [2, 3] were taken from the earlier report" in text
    assert "random = a seeded order" in text and "perfect =" not in text  # the queues it ran
    assert grown["summary"]["app"][-1]["accuracy_retrained"] == pytest.approx(0.83)
    ran.clear()
    assert main([*base, "--seeds", "3,4", "--rerun-seeds"]) == 0 and ran == [3, 4]
    ran.clear()
    assert main([*base, "--seeds", "3,4", "--rerun-seeds", "4"]) == 0 and ran == [4]
    assert json.loads(path.read_text())["seeds_from_earlier_report"] == [3]
    ran.clear()
    assert main([*base, "--seeds", "3,4", "--rerun-seeds", "four"]) != 0 and ran == []
    queues = base.index("app,random")
    other_queues = [*base[:queues], "app,cleanlab", *base[queues + 1:]]
    assert main([*other_queues, "--seeds", "3,4"]) == 0 and ran == [3, 4]
    ran.clear()
    budget = base.index("0.01")
    assert main([*base[:budget], "0.02", *base[budget + 1:], "--seeds", "3,4"]) == 0
    assert ran == [3, 4]
