"""SIGKILL at a random point: of a process clicking through the app's decision path, and of a
training run. A restart finds every decision the killed process reported as committed, replays
the log to the same weights as a fresh session over the same decisions, and a rerun training
gives the uninterrupted run's checkpoint, never a torn one. The kill points are drawn at random
(the seed is in every failure message)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from influence_core.artifacts import model_hash
from influence_core.audit.session import open_session
from influence_core.audit.store import DecisionLog
from influence_core.config import recipe
from influence_core.data.registry import load_dataset, load_problem
from influence_core.data.training import checkpoint_dir, train_or_load

REPO = Path(__file__).resolve().parents[1]
QUICK = {"epochs": 2}  # a digits/mlp trained in about a second
MAX_REPORTED = 12  # the clicker is killed after 1..MAX_REPORTED reported decisions (random)
WEIGHT_TOL = 1e-6  # replayed vs fresh-session weights (both are exact recomputations)

_CLICKER = textwrap.dedent("""
    import random, sys
    from influence_core.app_tables import record_many, undo_last
    from influence_core.audit.session import open_session
    from influence_core.config import recipe
    from influence_core.data.registry import load_problem
    problem = load_problem(recipe("digits", "mlp", epochs=2))
    session = open_session(problem, "kfac", sys.argv[1], suspects=list(range(200)))
    rng = random.Random(int(sys.argv[2]))
    print("ready", flush=True)
    while True:
        i, action = rng.randrange(200), rng.choice(["keep", "relabel", "remove", "undo"])
        version = session.log.version()
        if action == "undo":  # the Undo button
            done = [d for d in [undo_last(session.log, "clicker", version)] if d]
        else:  # a Review button (record_decision is record_many of one)
            label = (session.log.labels[i] + rng.randrange(1, 10)) % 10 \\
                if action == "relabel" else None
            done, _ = record_many(session, [i], action, [label], "clicker", version)
        for d in done:
            print(d.id, flush=True)  # only after record_many returned: committed
""")


def _seed() -> int:
    return random.SystemRandom().randrange(2**31)


def _replay(rows: list, path: Path, labels: torch.Tensor, classes: int) -> DecisionLog:
    """A new log holding the same decisions, re-entered one by one in id order."""
    log, new_id = DecisionLog(path, labels, classes), {}
    for d in rows:
        if d.action == "undo":
            new = log.undo(new_id[d.undoes], d.annotator)
        else:
            new = log.record(d.index, d.action, d.label, d.annotator)
        new_id[d.id] = new.id
    return log


def test_a_killed_reviewer_loses_no_reported_decision_and_replays_exactly(
        artifacts_home: Path, tmp_path: Path) -> None:
    seed = _seed()
    rng = random.Random(seed)
    problem = load_problem(recipe("digits", "mlp", **QUICK))  # the clicker reuses it
    path = tmp_path / "decisions.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _CLICKER, str(path), str(seed)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    reported = [int(proc.stdout.readline()) for _ in range(rng.randint(1, MAX_REPORTED))]
    time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside a later click
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reported += [int(line) for line in proc.stdout.read().split()]  # already in the pipe
    restarted = open_session(problem, "kfac", path)
    rows = restarted.log.decisions()
    assert set(reported) <= {d.id for d in rows}, f"seed {seed}: lost committed decisions"
    fresh = open_session(problem, "kfac",
                         _replay(rows, tmp_path / "replayed.db", problem.train.labels, 10).path)
    assert fresh.edits() == restarted.edits(), f"seed {seed}"
    ours, theirs = restarted.state().model.state_dict(), fresh.state().model.state_dict()
    for name, value in ours.items():
        assert torch.allclose(value, theirs[name], rtol=0, atol=WEIGHT_TOL), f"seed {seed}: {name}"
    restarted.log.close(), fresh.log.close()


_TRAINER = textwrap.dedent("""
    from influence_core.config import recipe
    from influence_core.data.registry import load_dataset
    from influence_core.data.training import train_or_load
    train, test = load_dataset("digits")
    print("training", flush=True)
    train_or_load(recipe("digits", "mlp"), train, test)
    print("saved", flush=True)
""")


def test_a_training_killed_anywhere_reruns_to_the_uninterrupted_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed = _seed()
    cfg = recipe("digits", "mlp")
    train, test = load_dataset("digits")
    monkeypatch.setenv("INFLUENCE_AUDIT_HOME", str(tmp_path / "clean"))
    start = time.perf_counter()
    reference = model_hash(train_or_load(cfg, train, test)[0])
    seconds = time.perf_counter() - start
    killed = tmp_path / "killed"
    monkeypatch.setenv("INFLUENCE_AUDIT_HOME", str(killed))
    # the trainer uses this process's thread count: with another, the rounding (and so the
    # weights it saves) may differ from the reference
    threads = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-c", _TRAINER], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, **threads})
    assert proc.stdout.readline().strip() == "training"
    time.sleep(random.Random(seed).uniform(0.0, 1.2 * seconds))  # training or saving
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    folder = checkpoint_dir(cfg)
    if (folder / "meta.json").is_file():  # the kill came after the last rename: complete
        assert (folder / "model.pt").is_file(), f"seed {seed}: meta.json without model.pt"
    rerun, _ = train_or_load(cfg, train, test)
    assert model_hash(rerun) == reference, f"seed {seed}: the rerun's weights differ"
    assert model_hash(train_or_load(cfg, train, test)[0]) == reference  # and it is reused
