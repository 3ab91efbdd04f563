"""Non-finite numbers never reach a checkpoint or the decision log: invalid recipe values, a
diverging training run, a checkpoint holding NaN, a damping that is not a positive finite
number, and a Newton step too large to be finite are all refused with a one-line message."""

from __future__ import annotations

import math
import sqlite3
import types
from pathlib import Path

import pytest
import torch

from influence_core.audit.unlearning import newton_damping
from influence_core.cli import main
from influence_core.config import recipe
from influence_core.data.models import CheckpointError, build_model
from influence_core.data.registry import load_problem
from influence_core.data.training import TrainingDiverged, checkpoint_dir, snapshot_path

QUICK = ["--epochs", "2"]  # a digits/mlp trained in about a second
SINGULAR_DAMPING = "1e-30"  # makes K-FAC's (G + lambda I)^-1 overflow float32 on digits/mlp


def _error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bars
    assert err.startswith("error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("flag, value, message", [
    ("--weight-decay", "nan", "weight_decay must be a finite number"),
    ("--weight-decay", "-1", "weight_decay must be a finite number"),
    ("--weight-decay", "inf", "weight_decay must be a finite number"),
    ("--noise", "1.5", "noise must be in [0, 1)"),
    ("--noise", "nan", "noise must be in [0, 1)"),
    ("--epochs", "0", "epochs and batch_size must be positive"),
])
def test_train_refuses_invalid_recipe_values(artifacts_home: Path, capsys, flag, value,
                                             message) -> None:
    assert message in _error(capsys, ["train", flag, value])
    assert not (artifacts_home / "models").exists()


@pytest.mark.parametrize("field, value", [("lr", 0.0), ("lr", math.inf), ("momentum", 1.0),
                                          ("momentum", math.nan)])
def test_train_config_refuses_non_finite_or_out_of_range_values(field: str, value: float
                                                                ) -> None:
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        recipe("digits", "mlp", **{field: value})


def test_a_diverging_run_stops_with_a_message_and_saves_nothing(artifacts_home: Path) -> None:
    cfg = recipe("digits", "mlp", epochs=1, lr=1e6)  # NaN within a few steps
    with pytest.raises(TrainingDiverged, match=r"diverged at step \d+ .* no checkpoint saved"):
        load_problem(cfg)
    folder = checkpoint_dir(cfg)
    assert not (folder / "model.pt").exists() and not (folder / "meta.json").exists()
    assert not snapshot_path(cfg, 1).parent.exists()


def test_a_checkpoint_with_nan_weights_is_refused_before_precompute(
        artifacts_home: Path, tmp_path: Path, capsys) -> None:
    model = build_model("mlp", (1, 8, 8), 10)
    state = model.state_dict()
    name = next(iter(state))
    state[name][0, 0] = float("nan")
    bad = tmp_path / "nan.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=f"non-finite weights .* in {name}"):
        load_problem(recipe("digits", "mlp"), checkpoint=bad)
    assert "non-finite weights" in _error(capsys, ["precompute", "--checkpoint", str(bad)])
    assert not (artifacts_home / "index").exists() and not (artifacts_home / "factors").exists()


@pytest.mark.parametrize("damping", [0.0, -1.0, math.nan, math.inf])
def test_newton_damping_refuses_a_value_that_is_not_positive_and_finite(damping: float
                                                                        ) -> None:
    with pytest.raises(ValueError, match="damping must be > 0 and finite"):
        newton_damping(types.SimpleNamespace(weight_decay=1e-3), damping)


@pytest.mark.parametrize("value", ["inf", "nan", "-2", "abc"])
def test_unlearn_refuses_a_bad_damping_before_training(artifacts_home: Path, capsys,
                                                       value: str) -> None:
    with pytest.raises(SystemExit):
        main(["unlearn", "--damping", value, "--remove", "1"])
    assert "--damping" in capsys.readouterr().err
    assert not (artifacts_home / "models").exists()


def test_a_non_finite_newton_step_is_refused_before_it_is_recorded(
        artifacts_home: Path, tmp_path: Path, capsys) -> None:
    db = tmp_path / "log.db"
    argv = ["unlearn", *QUICK, "--method", "kfac", "--log", str(db), "--remove", "1,2,3"]
    err = _error(capsys, [*argv, "--damping", SINGULAR_DAMPING])
    assert "not finite at damping 1e-30" in err and "larger damping" in err
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 0
    assert main(argv) == 0  # the default damping records the same batch


def test_the_apps_preview_and_record_paths_refuse_a_non_finite_step(artifacts_home: Path,
                                                                     tmp_path: Path) -> None:
    from influence_core import open_session, preview, record_decision, record_many

    problem = load_problem(recipe("digits", "mlp", epochs=2))
    session = open_session(problem, "kfac", tmp_path / "app.db", damping=float(SINGULAR_DAMPING))
    state = session.state()
    seen = preview(session, state, 3, "remove")
    assert "not finite at damping 1e-30" in seen.refused and seen.flips.empty
    refused = record_decision(session, 3, "remove", None, "ann", state.version)
    assert refused is not None and "larger damping" in refused
    assert record_many(session, [3, 4], "keep", [None, None], "ann", state.version)[0]
    assert record_many(session, [5, 6], "remove", [None, None], "ann", state.version)[0] == []
    assert [d.action for d in session.log.decisions()] == ["keep", "keep"]
    session.log.close()
