"""`evaluate rounds` on a tiny digits setting: the report's numbers agree with each other."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from influence_core.cli.main import main
from influence_core.evaluation.cleaning_rounds import QUEUES

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
BUDGET, ROUNDS = 0.01, 2  # 14 decisions per round on digits' 1437 training images
GAP_TOL = 1e-9


def test_evaluate_rounds_writes_a_consistent_report(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFLUENCE_AUDIT_HOME", str(tmp_path / "home"))
    out = tmp_path / "home" / "reports"  # the default folder, which the Evaluate page reads
    argv = ["evaluate", "rounds", "--dataset", "digits", "--model", "mlp", "--noise", "0.1",
            "--noise-kind", "pair", "--budget", str(BUDGET), "--rounds", str(ROUNDS),
            "--seeds", "0"]
    assert main(argv) == 0
    result = json.loads((out / "rounds_digits_mlp_pair.json").read_text())
    assert (out / "rounds_digits_mlp_pair.md").is_file()
    assert (out / "rounds_digits_mlp_pair.accuracy.plotly.json").is_file()
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
    assert main(argv) == 0  # resumed: every training and decision is reused
    assert json.loads((out / "rounds_digits_mlp_pair.json").read_text())["seeds"] == [seed]
    # The Evaluate page draws it (its figure and its table)
    monkeypatch.setenv("INFLUENCE_AUDIT_ALLOWED_ROOTS", os.pathsep.join([str(Path.cwd()),
                                                                        str(tmp_path)]))
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("views/evaluate.py")
    at = at.run()
    assert not at.exception
    assert any("rounds_digits_mlp_pair" in md.value for md in at.markdown)
    st.cache_resource.clear()
    st.cache_data.clear()
