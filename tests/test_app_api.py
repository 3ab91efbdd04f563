"""influence_core.app_api: what the dashboard asks of the core, on digits/mlp (trained once)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from influence_core import (
    ReviewCache,
    accuracy,
    checkpoint_bytes,
    current_label,
    decisions_frame,
    early_card,
    evidence,
    example_table,
    explain,
    explain_image,
    explain_query,
    has_decision,
    ihvp_errors,
    influenced_queries,
    is_removed,
    labels_csv,
    load_problem,
    next_suspect,
    open_audit,
    open_index,
    open_suggester,
    predict_logits,
    preview,
    preview_indices,
    query_probabilities,
    query_table,
    query_vectors,
    rank_descending,
    recent_decisions,
    recipe,
    record_decision,
    record_many,
    record_rows,
    review_progress,
    review_queue,
    reviewed,
    train_predictions,
    train_probabilities,
    train_rows,
    undo_last,
)

QUEUE = 50  # suspects re-ranked per decision in these tests
LOSS_TOL = 1e-6  # float32 losses recomputed here vs the ranking's: same forward, same order


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """(problem, index, audit session) on digits/mlp in a private $INFLUENCE_AUDIT_HOME."""
    mp = pytest.MonkeyPatch()
    mp.setenv("INFLUENCE_AUDIT_HOME", str(tmp_path_factory.mktemp("home")))
    problem = load_problem(recipe("digits", "mlp"), Path.cwd() / "data")
    index = open_index(problem)
    session = open_audit(problem, index, queue_size=QUEUE)
    yield problem, index, session
    session.log.close()
    mp.undo()


def test_queue_is_sorted_by_suspect_score_and_marks_decisions(world: tuple) -> None:
    _problem, _, session = world
    frame = review_queue(session, session.state())
    assert len(frame) == QUEUE
    assert (np.diff(frame["suspicion"]) <= 0).all()
    assert set(frame["decision"]) == {""}
    assert (frame["alternative"] != frame["label"]).all()
    top = int(frame["index"][0])
    # digits is small enough for the default suspect ranking (suspect_scores) to order the queue
    assert session.prior is not None
    assert top == int(torch.argmax(session.prior))
    assert (frame["score"] > 0).all()  # refreshed self-influence is still reported


def test_the_loss_ranking_orders_the_queue_by_descending_training_loss(world: tuple) -> None:
    problem, index, _ = world
    session = open_audit(problem, index, queue_size=QUEUE, ranking="loss")
    try:
        assert session.ranking == "loss"
        logits = predict_logits(problem.model, problem.train)
        loss = torch.nn.functional.cross_entropy(logits, problem.train.labels, reduction="none")
        state = session.state()
        frame = review_queue(session, state)
        queued = torch.tensor(frame["index"].tolist())
        assert len(queued) == QUEUE - int(state.removed[session.suspects].sum())
        assert (np.diff(loss[queued].numpy()) <= LOSS_TOL).all()  # descending
        rest = torch.ones(len(loss), dtype=torch.bool)
        rest[queued] = False
        rest &= ~state.removed  # removed examples leave the queue
        assert loss[queued].min() >= loss[rest].max() - LOSS_TOL  # and the largest ones
        np.testing.assert_allclose(frame["suspicion"], loss[queued].double(), atol=LOSS_TOL)
        decision = session.record(int(queued[0]), "keep", annotator="ranked")
        assert decision.ranking == "loss" and session.undo(decision.id).ranking == "loss"
    finally:
        session.log.close()


def test_an_unknown_ranking_is_refused_naming_the_choices(world: tuple) -> None:
    problem, index, _ = world
    with pytest.raises(ValueError, match=r"unknown ranking 'margin'.*self_influence.*cleanlab"):
        open_audit(problem, index, queue_size=QUEUE, ranking="margin")


def test_evidence_never_suggests_the_given_label_and_excludes_the_example(world: tuple) -> None:
    problem, index, _ = world
    i, y = 0, int(problem.train.labels[0])
    ev = evidence(index, problem.train, i, y, k=5)
    assert ev.suggested != y and 0 <= ev.suggested < problem.train.num_classes
    assert i not in ev.support[0] and i not in ev.oppose[0]
    assert (np.diff(ev.support[1]) <= 0).all() and (np.diff(ev.oppose[1]) >= 0).all()
    assert ev.support[1][0] > 0 > ev.oppose[1][0]


def test_preview_matches_the_state_after_the_decision(world: tuple) -> None:
    _problem, _, session = world
    state = session.state()
    i = int(state.suspects[0])
    p = preview(session, state, i, "remove")
    decision = session.log.record(i, "remove", None, "t", state.version)
    after = session.state()
    flips = torch.nonzero(after.test_logits.argmax(1) != state.test_logits.argmax(1))[:, 0]
    assert sorted(p.flips["index"]) == flips.tolist()
    undo_last(session.log, "t", after.version)
    assert session.log.edits() == {}
    assert decision.id in set(decisions_frame(session.log)["undoes"].dropna())


def test_preview_on_a_test_subset_agrees_with_the_full_preview(world: tuple) -> None:
    """limit < test size: a fixed seeded subset is evaluated, its flips are the full preview's
    flips inside it, and the state's subset logits are the full logits' rows."""
    _problem, _, session = world
    state = session.state()
    i = int(state.suspects[1])
    full = preview(session, state, i, "relabel", (int(session.train.labels[i]) + 1) % 10)
    part = preview(session, state, i, "relabel", (int(session.train.labels[i]) + 1) % 10,
                   limit=100)
    idx = preview_indices(len(session.problem.test), 100)
    assert part.evaluated == 100 == len(idx) and full.evaluated == len(session.problem.test)
    assert set(part.flips["index"]) == set(full.flips["index"]) & set(idx.tolist())
    torch.testing.assert_close(state.test_logits_of(idx), state.test_logits[idx])


def test_record_many_counts_a_repeated_row_once_and_undo_is_per_annotator(world: tuple) -> None:
    _, _, session = world
    log = session.log
    done, notes = record_many(session, [1, 2, 2], "remove", [None] * 3, "bulk", log.version())
    assert [d.index for d in done] == [1, 2] and notes == []  # a repeated row counts once
    record_many(session, [3], "keep", [None], "other", log.version())
    assert undo_last(log, "bulk", log.version()).index == 2
    assert set(reviewed(log)) == {1, 3}
    rows = list(csv.DictReader(io.StringIO(labels_csv(log).decode())))
    assert rows[1]["removed"] == "1" and rows[2]["removed"] == "0"
    undo_last(log, "bulk", log.version())
    undo_last(log, "other", log.version())
    assert undo_last(log, "bulk", log.version()) is None and reviewed(log) == {}


def test_explain_and_influenced_queries(world: tuple) -> None:
    problem, index, session = world
    pred, probs, helpful, harmful = explain(index, problem.test.tensor([0])[0], k=4)
    assert pred == int(np.argmax(probs)) and abs(probs.sum() - 1) < 1e-6
    assert helpful[1][0] >= helpful[1][-1] and harmful[1][0] <= harmful[1][-1]
    vectors = query_vectors(index, problem.test)
    assert vectors.shape[0] == len(problem.test)
    q, scores = influenced_queries(index, vectors, int(helpful[0][0]), k=4)
    assert len(q) == 4 and (np.diff(np.abs(scores)) <= 1e-6).all()
    probs_all = query_probabilities(session.state())
    assert probs_all.shape == (len(problem.test), problem.test.num_classes)
    state_dict = torch.load(io.BytesIO(checkpoint_bytes(session.state())), weights_only=True)
    assert set(state_dict) == set(problem.model.state_dict())


def test_ihvp_errors_compare_every_estimator_with_the_exact_solve(world: tuple) -> None:
    layers, errors = ihvp_errors(world[0], vectors=4)
    assert layers and set(errors) == {"ekfac", "kfac", "identity"}
    assert all(np.isfinite(v) and v >= 0 for v in errors.values())


def test_prefetched_answers_equal_the_ones_a_click_computes(world: tuple) -> None:
    """ReviewCache.warm computes, in a background thread, the states after relabelling and after
    removing the current suspect and the next card's evidence and previews; each equals the
    answer computed directly (from a fresh session for the states)."""
    problem, index, session = world
    state = session.state()
    done = set(reviewed(session.log))
    i = next_suspect(state, done)
    cache = ReviewCache(session, index)
    cache.warm(state, i, done).result(timeout=300)
    suggested = evidence(index, problem.train, i, int(state.labels[i])).suggested
    fresh = open_audit(problem, index, queue_size=QUEUE)
    try:
        for remove, relabel in (([], {i: suggested}), ([i], {})):
            ahead = session.state_for(remove, relabel)  # a cache hit: computed by warm()
            direct = fresh.state_for(remove, relabel)
            assert torch.equal(ahead.delta, direct.delta)
            assert torch.equal(ahead.suspects, direct.suspects)
            j = next_suspect(ahead, done | {i})
            assert j != i
            label = int(ahead.labels[j])
            want = evidence(index, problem.train, j, label)
            got = cache.evidence(j, label)
            assert got.suggested == want.suggested
            np.testing.assert_array_equal(got.support[0], want.support[0])
            for action, new in (("remove", None), ("relabel", want.suggested)):
                hit, computed = cache.preview(ahead, j, action, new), preview(
                    session, ahead, j, action, new)
                assert hit.test_loss_change == pytest.approx(computed.test_loss_change, abs=1e-12)
                assert hit.flips.equals(computed.flips)
    finally:
        fresh.log.close()
        cache.close()


def test_a_state_asked_for_by_two_threads_is_computed_once(world: tuple,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, session = world
    calls, inner = [], session._compute

    def counted(*args: object) -> object:
        calls.append(args)
        return inner(*args)

    monkeypatch.setattr(session, "_compute", counted)
    edits = ([int(session.suspects[7]), int(session.suspects[11])], {})
    with ThreadPoolExecutor(4) as pool:
        states = list(pool.map(lambda _: session.state_for(*edits), range(4)))
    assert len(calls) == 1
    assert all(torch.equal(s.delta, states[0].delta) for s in states)


# ---- app_tables: the model-dependent tables behind grids, captions and buttons ----------------
def test_example_table_agrees_with_the_models_accuracy(world: tuple) -> None:
    problem, _, _ = world
    table = example_table(problem, "test")
    assert table["index"].tolist() == list(range(len(problem.test)))
    assert set(table["label"]) <= set(problem.test.class_names)
    assert (table["correct"] == (table["label"] == table["prediction"])).all()
    assert table["correct"].mean() == pytest.approx(accuracy(problem.model, problem.test))


def test_query_table_is_the_current_models_argmax_and_confidence(world: tuple) -> None:
    problem, _, session = world
    state = session.state()
    table, probs = query_table(state, problem.test), query_probabilities(state)
    assert (table["label"] == problem.test.labels.numpy()).all()
    assert (table["prediction"] == probs.argmax(1)).all()
    np.testing.assert_allclose(table["confidence"], probs.max(1))


def test_train_rows_and_labels_follow_the_edits(world: tuple) -> None:
    problem, index, session = world
    i, j = int(session.suspects[2]), int(session.suspects[3])
    new = (int(problem.train.labels[i]) + 1) % problem.train.num_classes
    state = session.state_for([j], {i: new})
    preds = train_predictions(index)
    rows = train_rows(state, preds, [j, i])
    assert rows["index"].tolist() == [j, i]
    assert rows["label"].tolist() == [int(problem.train.labels[j]), new]
    assert rows["prediction"].tolist() == preds[[j, i]].tolist()
    assert current_label(state, i) == new and is_removed(state, j) and not is_removed(state, i)


def test_an_uploaded_image_is_explained_like_the_test_example_it_shows(world: tuple) -> None:
    problem, index, _ = world
    buf = io.BytesIO()
    problem.test.image(5).save(buf, format="PNG")
    pred, probs, helpful, harmful = explain_image(index, problem.train, buf.getvalue(), k=4)
    same = explain_query(index, problem.test, 5, k=4)
    assert pred == same[0]
    np.testing.assert_allclose(probs, same[1], atol=1e-6)
    assert helpful[0].tolist() == same[2][0].tolist()
    assert harmful[0].tolist() == same[3][0].tolist()


def test_rank_descending_puts_the_largest_first() -> None:
    assert rank_descending(np.array([0.5, 3.0, -1.0, 2.0])).tolist() == [2, 0, 3, 1]


def test_recorded_decisions_refusals_and_bulk_rows(world: tuple) -> None:
    _, _, session = world
    log, frame = session.log, review_queue(session, session.state())
    i = int(frame["index"][4])
    assert not has_decision(log, "tables")
    assert record_decision(session, i, "remove", None, "tables", log.version()) is None
    assert "removed" in record_decision(session, i, "keep", None, "tables", log.version())
    assert has_decision(log, "tables") and review_progress(session) == (1, QUEUE)
    rows = frame.iloc[[5, 6]]
    assert record_rows(session, rows, "relabel", "tables", log.version()) == []
    newest = recent_decisions(log, 2)
    assert newest["index"].tolist() == rows["index"].tolist()[::-1]
    assert newest["label"].tolist() == rows["alternative"].tolist()[::-1]
    assert len(recent_decisions(log, None)) == len(decisions_frame(log))
    while undo_last(log, "tables", log.version()) is not None:
        pass
    assert not has_decision(log, "tables") and review_progress(session) == (0, QUEUE)


def test_the_apps_decisions_record_the_ranking_they_were_made_under(world: tuple) -> None:
    _, _, session = world
    log, frame = session.log, review_queue(session, session.state())
    i = int(frame["index"][7])
    assert record_decision(session, i, "keep", None, "ranked", log.version(), "cleanlab") is None
    assert record_rows(session, frame.iloc[[8]], "remove", "ranked", log.version(), "loss") == []
    undo_last(log, "ranked", log.version(), "self_influence")
    newest = recent_decisions(log, 3)
    assert newest["action"].tolist() == ["undo", "remove", "keep"]
    assert newest["ranking"].tolist() == ["self_influence", "loss", "cleanlab"]
    while undo_last(log, "ranked", log.version()) is not None:
        pass


def test_the_card_before_the_index_is_the_one_the_session_opens_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """early_card needs no index (nothing of it is on disk when it answers) and shows what the
    full card will: the queue's first unreviewed suspect, its label, the model's probabilities
    and the suggestion; after decisions it skips the reviewed ones; a pinned index is shown."""
    monkeypatch.setenv("INFLUENCE_AUDIT_HOME", str(tmp_path))
    problem = load_problem(recipe("digits", "mlp"), Path.cwd() / "data")
    card = early_card(problem, "default")
    assert not (tmp_path / "index").exists()
    session = open_audit(problem, open_index(problem))
    try:
        state = session.state()
        frame = review_queue(session, state)
        first = int(frame["index"][0])
        assert (card.index, card.label, card.position) == (first, int(frame["label"][0]), 0)
        assert card.queued == len(frame) and card.ranking == session.ranking == "default"
        probs = train_probabilities(state, problem.train, [first])[0]
        np.testing.assert_allclose(card.probs, probs, atol=1e-6)
        suggester = open_suggester(problem, session.ranking)
        assert card.suggested == suggester.suggest(first, card.label, probs) != card.label
        session.record(first, "keep", annotator="early")
        session.record(int(frame["index"][1]), "remove", annotator="early")
        todo = review_queue(session, session.state()).query("decision == ''")["index"].tolist()
        again = early_card(problem, "default")
        assert (again.index, again.position, again.queued) == (todo[0], 0, len(todo))
        assert early_card(problem, "default", pinned=todo[3]).position == 3
        assert early_card(problem, "default", pinned=first).position == -1  # reviewed: still shown
        assert early_card(problem, "self_influence") is None  # that queue is the index's
    finally:
        session.log.close()
