"""The Newton step's damping per problem and edit kind (audit.damping): the calibration's choice
follows its own measurements, sessions opened afterwards use it, a kind whose step never beat
doing nothing is recorded without moving the model, and an explicit damping overrides it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from influence_core import load_problem, open_session, recipe
from influence_core.audit import damping as dmp
from influence_core.audit.session import decision_log_path
from influence_core.audit.unlearning import newton_damping, newton_step
from influence_core.config import CURVATURE_CONFIGS
from influence_core.curvature import fit_curvature
from influence_core.curvature.gradients import TrackedModel
from influence_core.curvature.task import ClassificationTask


@pytest.fixture
def problem(artifacts_home: Path) -> object:
    return load_problem(recipe("digits", "mlp", epochs=2))


def _fit(problem: object) -> object:
    return fit_curvature("kfac", TrackedModel(problem.model), ClassificationTask(),
                         problem.train, CURVATURE_CONFIGS["kfac"]())


def _step(problem: object, lam: float, remove: list, relabel: dict) -> torch.Tensor:
    curv = _fit(problem).rebased(TrackedModel(problem.model), lam)
    return newton_step(curv, ClassificationTask(), problem.train, remove, relabel,
                       weight_decay=problem.config.weight_decay)


def test_calibration_picks_the_best_measured_damping_per_kind(problem: object,
                                                              tmp_path: Path) -> None:
    from influence_core.cli import main

    out = tmp_path / "damping.json"
    assert main(["calibrate", "--epochs", "2", "--method", "kfac", "--out", str(out)]) == 0
    path = dmp.calibration_path(decision_log_path(problem), "kfac")
    result = json.loads(path.read_text())
    assert json.loads(out.read_text())["kinds"] == result["kinds"]
    rule = dmp.load_rule(path, problem.config)
    k = max(1, round(dmp.SET_FRACTION * len(problem.train)))
    for kind in dmp.KINDS:
        r = result["kinds"][kind]
        ratios = {float(c): v for c, v in r["ratios"].items()}
        assert set(ratios) == set(dmp.GRID) and all(math.isfinite(v) for v in ratios.values())
        assert r["ratio"] == max(ratios.values()) and ratios[r["multiple"]] == r["ratio"]
        assert r["used"] == (r["ratio"] > 1.0) and r["sets"] == [k, k]
        unit = dmp.damping_unit(problem.config)
        assert rule.damping[kind] == (pytest.approx(r["multiple"] * unit) if r["used"] else None)
    # a session opened on this model afterwards uses the rule
    session = open_session(problem, "kfac")
    assert session.rule.calibrated and session.rule.damping == rule.damping
    session.log.close()


def _write(path: Path, remove: dict, relabel: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    kinds = {"remove": remove, "relabel": relabel}
    path.write_text(json.dumps({"version": dmp.VERSION, "kinds": kinds}))


def test_a_kind_without_a_helpful_step_is_logged_but_moves_nothing(problem: object,
                                                                    tmp_path: Path) -> None:
    log = tmp_path / "decisions" / "m.db"
    unit = dmp.damping_unit(problem.config)
    _write(dmp.calibration_path(log, "kfac"),
           {"used": False, "multiple": 1000.0, "damping": 1000 * unit, "ratio": 0.97},
           {"used": True, "multiple": 100.0, "damping": 100 * unit, "ratio": 1.4})
    session = open_session(problem, "kfac", log)
    assert session.rule.damping == {"remove": None, "relabel": pytest.approx(100 * unit)}
    assert "Newton step skipped" in session.rule.why["remove"]
    session.record(5, "remove")
    state = session.state()
    assert state.removed[5] and not state.delta.any()  # logged, the model left as it was
    session.record(7, "relabel", 3)
    expected = _step(problem, 100 * unit, [], {7: 3})  # only the relabel, at its own damping
    torch.testing.assert_close(session.state().delta, expected, rtol=1e-4, atol=1e-7)
    session.log.close()


def test_an_explicit_damping_overrides_the_calibration(problem: object, tmp_path: Path) -> None:
    log = tmp_path / "decisions" / "m.db"
    unit = dmp.damping_unit(problem.config)
    _write(dmp.calibration_path(log, "kfac"),
           {"used": False, "multiple": 1.0, "damping": unit, "ratio": 0.5},
           {"used": False, "multiple": 1.0, "damping": unit, "ratio": 0.5})
    session = open_session(problem, "kfac", log, damping=0.5)
    assert not session.rule.calibrated and session.rule.damping == {"remove": 0.5,
                                                                    "relabel": 0.5}
    session.record(5, "remove")
    torch.testing.assert_close(session.state().delta, _step(problem, 0.5, [5], {}),
                               rtol=1e-4, atol=1e-7)
    session.log.close()
    default = open_session(problem, "kfac", tmp_path / "other" / "n.db")
    assert default.rule.damping["remove"] == newton_damping(problem.config)
    assert "not calibrated" in default.rule.describe()
    default.log.close()


def test_with_one_damping_for_both_kinds_the_step_is_the_joint_newton_step(
    problem: object, tmp_path: Path,
) -> None:
    """Removals and relabels stepped apart (per-kind dampings) sum to newton_step's joint step
    when both kinds share one damping, including its 1/(N - m) for the relabels."""
    log = tmp_path / "decisions" / "m.db"
    unit = dmp.damping_unit(problem.config)
    same = {"used": True, "multiple": 300.0, "damping": 300 * unit, "ratio": 1.2}
    _write(dmp.calibration_path(log, "kfac"), same, dict(same))
    session = open_session(problem, "kfac", log)
    for i in (3, 4, 5):
        session.record(i, "remove")
    session.record(7, "relabel", 2)
    expected = _step(problem, 300 * unit, [3, 4, 5], {7: 2})
    torch.testing.assert_close(session.state().delta, expected, rtol=1e-4, atol=1e-7)
    session.log.close()


def test_a_round_uses_its_own_calibration_else_the_base_models_and_says_so(
    problem: object, tmp_path: Path,
) -> None:
    import dataclasses

    log = tmp_path / "decisions" / "m.db"
    unit = dmp.damping_unit(problem.config)
    base = {"used": True, "multiple": 300.0, "damping": 300 * unit, "ratio": 1.2}
    _write(dmp.calibration_path(log, "kfac"), base, dict(base))
    folder = tmp_path / "rounds" / "m" / "2"
    meta = {**problem.meta, "round": 2, "checkpoint": str(folder / "model.pt")}
    second = dataclasses.replace(problem, meta=meta)
    assert dmp.model_calibration_path(problem, log, "kfac") == dmp.calibration_path(log, "kfac")
    assert dmp.model_calibration_path(second, log, "kfac") == folder / "calibration-kfac.json"
    mine = dmp.model_rule(problem, log, "kfac")
    assert mine.calibrated and not mine.from_base
    borrowed = dmp.model_rule(second, log, "kfac")  # no calibration of its own yet
    assert borrowed.from_base and borrowed.damping == mine.damping
    assert all("measured on the base model" in w for w in borrowed.why.values())
    own = {"used": False, "multiple": 10.0, "damping": 10 * unit, "ratio": 0.9}
    _write(folder / "calibration-kfac.json", own, dict(base))
    rule = dmp.model_rule(second, log, "kfac")
    assert not rule.from_base and rule.damping == {"remove": None,
                                                   "relabel": pytest.approx(300 * unit)}
    assert dmp.model_rule(problem, tmp_path / "other" / "n.db", "kfac") is None


def test_calibration_leaves_out_what_the_model_never_trained_on(
    problem: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    trained_on = []
    real = dmp.train_model

    def spy(model: object, data: object, cfg: object, indices: object, *args: object,
            **kwargs: object) -> object:
        trained_on.append(set(torch.as_tensor(indices).tolist()))
        return real(model, data, cfg, indices, *args, **kwargs)

    monkeypatch.setattr(dmp, "train_model", spy)
    n = len(problem.train)
    excluded = set(range(0, n, 3))
    path = tmp_path / "calibration.json"
    dmp.calibrate(problem, _fit(problem), path, excluded=excluded)
    result = json.loads(path.read_text())
    k = max(1, round(dmp.SET_FRACTION * (n - len(excluded))))
    assert all(r["sets"] == [k, k] for r in result["kinds"].values())
    assert len(trained_on) == 4
    for kept in trained_on:  # each retraining: never an excluded example, at most 2k edits
        assert not kept & excluded and len(kept) >= n - len(excluded) - k
    sets = dmp._edit_sets(problem.model, problem.train,
                          torch.as_tensor([i in excluded for i in range(n)]))
    for remove, relabel in [*sets["remove"], *sets["relabel"]]:
        assert not (set(remove) | set(relabel)) & excluded


def test_calibrating_a_session_changes_its_step_at_once(problem: object, tmp_path: Path) -> None:
    from influence_core import calibrate_review, refresh_calibration

    log = tmp_path / "decisions" / "m.db"
    session = open_session(problem, "kfac", log)
    assert not session.rule.calibrated
    session.record(7, "relabel", 3)
    session.record(9, "remove")
    assert session.state().delta.any()
    rule = calibrate_review(session)
    assert dmp.calibration_path(log, "kfac").is_file()
    assert session.rule is rule and rule.calibrated and not rule.from_base
    after = session.state().delta
    fresh = open_session(problem, "kfac", tmp_path / "again" / "m.db")  # no calibration there
    assert not refresh_calibration(fresh)  # its model has no calibration
    fresh.use_rule(rule)
    fresh.record(7, "relabel", 3)
    fresh.record(9, "remove")
    torch.testing.assert_close(after, fresh.state().delta)  # the new rule's step
    # a rule change drops the states stepped under the old one, even for the same edits
    session.use_rule(dmp.DampingRule({"remove": None, "relabel": None}, calibrated=True))
    assert not session.state().delta.any()
    other = open_session(problem, "kfac", log)  # opened before a calibration of its model:
    other.use_rule(dmp.default_rule(problem.config))
    assert refresh_calibration(other) and other.rule == rule  # it adopts the one written since
    assert not refresh_calibration(other)
    other.log.close()
    session.log.close()
    fresh.log.close()
