"""The precompute pipeline: resumes by shard, reuses complete artifacts, refuses stale ones."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from influence_core import (
    ArtifactError,
    EKFACConfig,
    IndexConfig,
    artifact_folder,
    load_dataset,
    load_index,
    model_hash,
    precompute,
)
from influence_core.config import TrainConfig
from influence_core.data.models import build_model
from influence_core.data.registry import Problem
from influence_core.data.training import train_model

INDEX = IndexConfig(dim=256, shard_size=256)  # digits: 1437 examples -> 6 shards


@pytest.fixture(scope="module")
def problem() -> Problem:
    train, test = load_dataset("digits")
    cfg = TrainConfig(dataset="digits", model="mlp", epochs=2, seed=1)
    torch.manual_seed(1)
    model = train_model(build_model("mlp", train.shape, train.num_classes), train, cfg).eval()
    return Problem(cfg, model, train, test, torch.zeros(len(train), dtype=torch.bool), {})


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, str]] = []

    def __call__(self, done: int, total: int, what: str) -> None:
        self.calls.append((done, total, what))

    def stages(self) -> set[str]:
        return {w for _, _, w in self.calls}


def _arrays(folder) -> dict[str, np.ndarray]:
    return {p.stem: np.array(np.load(p)) for p in folder.glob("*.npy")}


def test_interrupted_run_resumes_only_unfinished_shards(problem, artifacts_home) -> None:
    folder = precompute(problem, "ekfac", EKFACConfig(), INDEX)
    before = _arrays(folder)
    (folder / "shards" / "2.done").unlink()  # as if killed while writing shard 2
    for name in ("index", "self_influence"):
        arr = np.load(folder / f"{name}.npy", mmap_mode="r+")
        arr[512:768] = 0
        arr.flush()
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    rec = Recorder()
    assert precompute(problem, "ekfac", EKFACConfig(), INDEX, rec) == folder
    assert rec.stages() == {"3/3 self-influence + index"}  # passes 1 and 2 were not redone
    assert max(total for _, total, _ in rec.calls) == 256  # one shard's examples only
    for name, arr in _arrays(folder).items():
        np.testing.assert_array_equal(arr, before[name], err_msg=name)


def test_complete_artifact_is_reused_with_provenance(problem, artifacts_home) -> None:
    folder = precompute(problem, "ekfac", EKFACConfig(), INDEX)
    rec = Recorder()
    assert precompute(problem, "ekfac", EKFACConfig(), INDEX, rec) == folder and not rec.calls
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] and manifest["dataset"] == "digits"
    assert manifest["model_hash"] == model_hash(problem.model) and manifest["method"] == "ekfac"
    assert len(manifest["damping"]) == 3 and all(d > 0 for d in manifest["damping"])
    assert "torch" in manifest["versions"] and manifest["peak_rss_mb"] > 0
    assert folder.parent == artifacts_home / "index"
    other = artifact_folder(problem, "ekfac", EKFACConfig(damping_factor=0.2), INDEX)
    assert other != folder  # keyed by content


def test_stale_or_edited_artifact_is_refused(problem, artifacts_home) -> None:
    folder = precompute(problem, "ekfac", EKFACConfig(), INDEX)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["curvature_config"]["damping_factor"] = 0.5
    (folder / "manifest.json").write_text(json.dumps(manifest))
    expected = {"curvature_config": dataclasses.asdict(EKFACConfig())}
    with pytest.raises(ArtifactError, match="curvature_config"):
        load_index(folder, problem.model, expected=expected)
    with pytest.raises(ArtifactError, match="curvature_config"):
        precompute(problem, "ekfac", EKFACConfig(), INDEX)
    with pytest.raises(ValueError, match="ekfac"):
        precompute(problem, "lissa", EKFACConfig(), INDEX)


def test_fit_on_a_subset_still_scores_every_example(problem, artifacts_home) -> None:
    """max_examples: the two fit passes see a seeded subset (their progress totals say so);
    self-influence and the index still cover every example and rank like the full fit."""
    full = _arrays(precompute(problem, "ekfac", EKFACConfig(), INDEX))
    rec = Recorder()
    part_folder = precompute(problem, "ekfac", EKFACConfig(max_examples=700), INDEX, rec)
    part = _arrays(part_folder)
    fit_totals = {t for _, t, w in rec.calls if w.startswith(("1/3", "2/3"))}
    score_totals = {t for _, t, w in rec.calls if w.startswith("3/3")}
    assert fit_totals == {700} and score_totals == {len(problem.train)}
    assert part["self_influence"].shape == full["self_influence"].shape
    assert np.isfinite(part["self_influence"]).all()
    rho = np.corrcoef(np.argsort(np.argsort(part["self_influence"])),
                      np.argsort(np.argsort(full["self_influence"])))[0, 1]
    assert 0.9 <= rho < 1.0, rho  # close to the full fit, and not secretly the same fit
    with pytest.raises(ValueError, match="max_examples"):
        EKFACConfig(max_examples=0)
