"""Cleaning rounds: what a retrain trains on, what a round records, the round queue, and that a
round is complete or absent under a crash (an exception, and a SIGKILL mid-write)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from influence_core import DecisionLog, load_problem, recipe
from influence_core.audit import rounds
from influence_core.audit.rounds import (
    list_rounds,
    open_round_session,
    retrain_round,
    round_problem,
)

REPO = Path(__file__).resolve().parents[1]
RELABELLED, REMOVED_N, KEPT = 12, 3, 5  # decisions of the first round in `reviewed_log`


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INFLUENCE_AUDIT_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def problem(home: Path):
    return load_problem(recipe("digits", "mlp", noise=0.1, noise_kind="pair"))


@pytest.fixture
def log(problem, tmp_path: Path) -> DecisionLog:
    """A log with relabels of flipped examples to their true label, removals and keeps."""
    handle = DecisionLog(tmp_path / "log.db", problem.train.labels, problem.train.num_classes)
    flipped = torch.nonzero(problem.flip_mask)[:, 0].tolist()
    clean = torch.nonzero(~problem.flip_mask)[:, 0].tolist()
    for i in flipped[:RELABELLED]:
        handle.record(i, "relabel", int(problem.train.original_labels[i]), "sim")
    for i in flipped[RELABELLED:RELABELLED + REMOVED_N]:
        handle.record(i, "remove", None, "sim")
    for i in clean[:KEPT]:
        handle.record(i, "keep", None, "sim")
    yield handle
    handle.close()


def test_retrain_trains_on_the_edited_labels_without_the_removed(problem, log, tmp_path,
                                                                  monkeypatch) -> None:
    seen = {}
    real = rounds.train_model

    def spy(model, data, cfg, indices=None, progress=None, at_step=None):
        seen["labels"], seen["indices"] = data.labels.clone(), torch.as_tensor(indices).clone()
        return real(model, data, cfg, indices, progress, at_step)

    monkeypatch.setattr(rounds, "train_model", spy)
    rnd = retrain_round(problem, log, tmp_path / "rounds")
    edits = log.edits()
    removed = sorted(i for i, y in edits.items() if y is None)
    want = problem.train.labels.clone()
    for i, y in edits.items():
        if y is not None:
            want[i] = y
    assert len(removed) == REMOVED_N and sum(y is not None for y in edits.values()) == RELABELLED
    assert torch.equal(seen["indices"], torch.tensor(
        [i for i in range(len(want)) if i not in set(removed)]))
    assert torch.equal(seen["labels"], want)
    assert torch.equal(rnd.labels, want) and rnd.removed.nonzero()[:, 0].tolist() == removed
    fixed = problem.train.original_labels[list(edits)[:RELABELLED]]
    assert torch.equal(seen["labels"][list(edits)[:RELABELLED]], fixed)


def test_a_round_records_its_log_version_and_parent_and_leaves_the_log(problem, log,
                                                                        tmp_path) -> None:
    before = log.decisions()
    two = retrain_round(problem, log, tmp_path / "rounds")
    assert (two.number, two.parent, two.log_version) == (2, 1, before[-1].id)
    assert log.decisions() == before  # nothing rewritten, nothing appended
    assert retrain_round(problem, log, tmp_path / "rounds").folder == two.folder  # nothing new
    log.record(int(two.queue[0]), "keep", None, "sim")
    three = retrain_round(problem, log, tmp_path / "rounds")
    assert (three.number, three.parent, three.log_version) == (3, 2, log.version())
    assert [r.number for r in list_rounds(tmp_path / "rounds")] == [2, 3]
    meta = two.meta  # round 2 is still readable as it was
    assert meta["log_version"] == before[-1].id and meta["config"]["noise_kind"] == "pair"
    assert 0.0 < meta["test_accuracy"] <= 1.0 and (two.folder / "model.pt").is_file()


def test_the_round_queue_leaves_out_reviewed_and_removed_examples(problem, log, tmp_path) -> None:
    rnd = retrain_round(problem, log, tmp_path / "rounds")
    decided = {d.index for d in log.active_decisions()}
    assert len(rnd.queue) > 0 and not decided & set(rnd.queue.tolist())
    session = open_round_session(problem, log.path, rnd)
    assert session.edits() == ([], {})  # the round already trained on every edit
    i = int(rnd.queue[0])
    flipped = torch.nonzero(problem.flip_mask)[:, 0].tolist()
    again = flipped[0]  # relabelled in round 1; a new label in round 2
    new = (int(rnd.labels[again]) + 1) % problem.train.num_classes
    session.record(i, "remove")
    session.record(again, "relabel", new)
    assert session.edits() == ([i], {again: new})
    state = session.state()
    assert not set(state.suspects.tolist()) & {i} and state.removed[i]
    assert torch.equal(state.removed & ~rnd.removed, torch.arange(len(state.removed)) == i)
    assert round_problem(problem, rnd).meta["round"] == 2


def test_the_round_queue_ranks_by_the_checkpoint_loss_of_its_own_training(problem, log,
                                                                           tmp_path) -> None:
    """checkpoint_loss.npy equals the suspect module's class-normalised checkpoint loss of an
    independent training on the round's labels and examples (same init, same batch order);
    scores.npy is QUEUE_RANKING's score from it and the base model's, and the queue follows."""
    from influence_core.audit.signals import class_normalised
    from influence_core.audit.suspects import _cached_train, _loss

    rnd = retrain_round(problem, log, tmp_path / "rounds")
    data = problem.train.with_labels(rnd.labels)
    kept = torch.nonzero(~rnd.removed)[:, 0]
    checkpoints = _cached_train(round_problem(problem, rnd), "queue-check", data, kept, 5)
    want = class_normalised(sum(_loss(m, data) for m in checkpoints), rnd.labels)
    own = torch.from_numpy(np.load(rnd.folder / "checkpoint_loss.npy"))
    assert torch.allclose(own, want, atol=1e-4)
    scores = torch.from_numpy(np.load(rnd.folder / "scores.npy"))
    assert rnd.meta["queue_ranking"] == rounds.QUEUE_RANKING
    parent = rounds.parent_scores(problem, tmp_path / "rounds", 1)
    assert torch.allclose(scores, rounds.round_scores(rounds.QUEUE_RANKING, own, parent))
    excluded = rnd.removed.clone()
    excluded[[d.index for d in log.active_decisions()]] = True
    best = torch.argsort(torch.where(excluded, -torch.inf, scores), descending=True,
                         stable=True)  # ties (equal rank means) in index order, as the queue
    assert rnd.queue[:20].tolist() == best[:20].tolist()


def test_a_parent_ranking_takes_the_rank_mean_with_the_previous_rounds_scores(
        problem, log, tmp_path, monkeypatch) -> None:
    """With QUEUE_RANKING 'checkpoint_loss+parent', round 2's scores are the rank mean of its
    own checkpoint loss and the base model's default ranking (here the training loss, which
    needs no extra training), round 3's of its own and round 2's stored scores; the queue
    follows them."""
    from influence_core.audit.signals import rank_mean
    from influence_core.audit.suspects import suspect_scores

    monkeypatch.setattr(rounds, "QUEUE_RANKING", "checkpoint_loss+parent")
    monkeypatch.setattr(rounds, "DEFAULT_SIGNAL", "loss")
    root = tmp_path / "rounds"
    two = retrain_round(problem, log, root, build_index=False)
    own = torch.from_numpy(np.load(two.folder / "checkpoint_loss.npy"))
    base = suspect_scores(problem, "loss")
    scores = torch.from_numpy(np.load(two.folder / "scores.npy"))
    assert two.meta["queue_ranking"] == "checkpoint_loss+parent"
    assert torch.allclose(scores, rank_mean(own, base).double())
    assert not torch.equal(torch.argsort(scores, stable=True),
                           torch.argsort(own, stable=True))  # the parent reorders it
    i = int(two.queue[0])
    log.record(i, "keep", None, "sim")
    three = retrain_round(problem, log, root, build_index=False)
    own3 = torch.from_numpy(np.load(three.folder / "checkpoint_loss.npy"))
    assert torch.allclose(torch.from_numpy(np.load(three.folder / "scores.npy")),
                          rank_mean(own3, scores))
    assert i not in three.queue.tolist()
    with pytest.raises(ValueError, match="unknown round ranking"):
        rounds.round_scores("loss", own, base)


def test_an_exception_mid_retrain_leaves_no_round_and_a_rerun_completes(problem, log, tmp_path,
                                                                        monkeypatch) -> None:
    root = tmp_path / "rounds"

    def crash(step: int, total: int, what: str) -> None:
        if step >= total // 2:
            raise RuntimeError("killed mid-training")

    with pytest.raises(RuntimeError):
        retrain_round(problem, log, root, progress=crash)
    assert list_rounds(root) == []
    real_save, calls = rounds.np.save, []

    def save_then_crash(f, value):  # the model and the first array are written, then a crash
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk gone")
        return real_save(f, value)

    monkeypatch.setattr(rounds.np, "save", save_then_crash)
    with pytest.raises(OSError):
        retrain_round(problem, log, root)
    monkeypatch.setattr(rounds.np, "save", real_save)
    assert list_rounds(root) == [] and not any(root.iterdir())  # no half folder left
    rnd = retrain_round(problem, log, root)
    assert rnd.number == 2 and [r.number for r in list_rounds(root)] == [2]


KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
from influence_core import DecisionLog, load_problem, recipe
from influence_core.audit import round_files, rounds
problem = load_problem(recipe("digits", "mlp", noise=0.1, noise_kind="pair"))
log = DecisionLog(Path(sys.argv[1]), problem.train.labels, problem.train.num_classes)
round_files._fsync_dir = lambda folder: os.kill(os.getpid(), signal.SIGKILL)  # every file written
rounds.retrain_round(problem, log, Path(sys.argv[2]))
"""


def test_a_sigkill_before_the_rename_leaves_no_round_and_a_rerun_completes(problem, log,
                                                                           tmp_path) -> None:
    root = tmp_path / "rounds"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILL_SCRIPT), str(log.path),
                           str(root)], cwd=REPO, env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    leftovers = list(root.glob(".tmp-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "meta.json").is_file()  # a whole, unrenamed
    assert list_rounds(root) == []  # ... and unused round
    rnd = retrain_round(problem, log, root)
    assert rnd.number == 2 and list(root.glob(".tmp-*")) == []  # the stale folder is gone


def test_the_retrain_command_trains_the_next_round_of_a_log(problem, log, capsys) -> None:
    from influence_core.audit.rounds import rounds_root
    from influence_core.cli.main import main

    argv = ["retrain", "--dataset", "digits", "--model", "mlp", "--noise", "0.1",
            "--noise-kind", "pair", "--log", str(log.path)]
    assert main(argv) == 0
    [rnd] = list_rounds(rounds_root(problem, log.path))
    assert str(rnd.folder) in capsys.readouterr().out and rnd.log_version == log.version()
    assert main([*argv[:-1], str(log.path.with_name("absent.db"))]) == 2  # no log, no retrain
