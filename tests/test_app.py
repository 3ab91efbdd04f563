"""The app through streamlit.testing.v1.AppTest: it renders, pages and filters without raising."""

from __future__ import annotations

import io
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
RUN_TIMEOUT_S = 300  # the first run trains digits/mlp: about 3 s alone, minutes on a busy box
PAGE_SIZE = 24
CAPTION = re.compile(r"^#(\d+) · (\S+) · (\S+)$")
SCORE_TOL = 1e-6  # training losses recomputed here vs the queue's (float32 forward, same model)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One artifacts folder per module: the first test trains, the others reuse the checkpoint."""
    return tmp_path_factory.mktemp("influence_audit_home")


def _clear_caches() -> None:
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture
def app(home: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., AppTest]]:
    """Runs app.py on the default problem (digits / mlp); keyword arguments become URL params.
    The server may read the working directory, the default data root and the test's tmp_path."""
    from influence_core import default_data_root

    monkeypatch.setenv("INFLUENCE_AUDIT_HOME", str(home))
    roots = (Path.cwd(), default_data_root(), tmp_path)
    monkeypatch.setenv("INFLUENCE_AUDIT_ALLOWED_ROOTS", os.pathsep.join(map(str, roots)))
    _clear_caches()

    def run(**query: str) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT_S)
        at.query_params.update(query)
        return at.run()

    yield run
    _clear_caches()


def captions(at: AppTest) -> list[str]:
    return [caption for image in at.get("image") for caption in image.captions]


def indices(at: AppTest) -> list[int]:
    return [int(CAPTION.match(caption).group(1)) for caption in captions(at)]


def test_dataset_page_shows_a_grid_of_captioned_images(app: Callable[..., AppTest]) -> None:
    at = app()
    assert not at.exception
    assert not at.error
    assert at.title[0].value == "Dataset"
    assert len(captions(at)) == PAGE_SIZE
    assert all(CAPTION.match(c) for c in captions(at)), captions(at)[:3]
    assert indices(at) == list(range(PAGE_SIZE))
    assert all(url for image in at.get("image") for url in image.value)
    accuracy = at.metric[0]
    assert accuracy.label == "Test accuracy"
    assert float(accuracy.value.rstrip("%")) > 90.0  # digits/mlp reference recipe: about 97 %


def test_next_page_shows_the_next_examples(app: Callable[..., AppTest]) -> None:
    at = app()
    at.pagination[0].set_value(2).run()
    assert not at.exception
    assert indices(at) == list(range(PAGE_SIZE, 2 * PAGE_SIZE))
    assert at.caption[0].value.startswith("Page 2 of ")


def test_page_number_from_the_url_survives_a_reload(app: Callable[..., AppTest]) -> None:
    at = app(grid_page="3")
    assert not at.exception
    assert indices(at) == list(range(2 * PAGE_SIZE, 3 * PAGE_SIZE))


def test_class_filter_shows_only_that_class_and_restarts_at_page_one(
    app: Callable[..., AppTest],
) -> None:
    at = app(grid_page="2")
    at.selectbox(key="label").set_value("7").run()
    assert not at.exception
    labels = [CAPTION.match(c).group(2) for c in captions(at)]
    assert labels and set(labels) == {"7"}
    assert at.caption[0].value.startswith("Page 1 of ")


def test_test_split_and_mispredicted_filter(app: Callable[..., AppTest]) -> None:
    at = app(split="test", wrong="true")
    assert not at.exception
    parsed = [CAPTION.match(c) for c in captions(at)]
    assert parsed, "digits/mlp makes a few test mistakes; the filter should show them"
    assert all(m.group(2) != m.group(3) for m in parsed)


def test_a_missing_image_folder_is_an_error_message(app: Callable[..., AppTest],
                                                    tmp_path: Path) -> None:
    at = app(dataset="imagefolder", folder=str(tmp_path / "no-such-images"))
    assert not at.exception
    assert at.error and "is not a folder" in at.error[0].value


@pytest.mark.filterwarnings("ignore:imagefolder")  # the core warns about the broken file
def test_an_image_folder_trains_and_shows_its_images(
    app: Callable[..., AppTest], tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir()
        for i in range(10):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    (tmp_path / "dogs" / "broken.png").write_bytes(b"not a png")
    at = app(dataset="imagefolder", folder=str(tmp_path))
    assert not at.exception
    assert not at.error
    assert at.warning and at.warning[0].value.startswith("1 unreadable image file(s)")
    assert at.dataframe[0].value["file"].str.endswith("broken.png").all()
    labels = {CAPTION.match(c).group(2) for c in captions(at)}
    assert labels == {"cats", "dogs"}


def test_thumbnails_are_nearest_neighbour_upscaled(app: Callable[..., AppTest]) -> None:
    from dashboard import images, state  # the app's own modules, called outside a script run

    [png] = state.thumbnails("digits", str(Path.cwd() / "data"), "train", (0,))
    thumb = np.asarray(Image.open(io.BytesIO(png)))
    assert thumb.shape == (images.THUMB_PX, images.THUMB_PX)
    block = images.THUMB_PX // 8  # digits are 8x8: every source pixel becomes a uniform block
    blocks = thumb.reshape(8, block, 8, block)
    assert (blocks == blocks[:, :1, :, :1]).all()
    assert len(np.unique(thumb)) > 2


def test_unreadable_checkpoint_is_an_error_message_not_a_traceback(
    app: Callable[..., AppTest], home: Path
) -> None:
    app()  # make sure the checkpoint exists
    [checkpoint] = home.glob("models/digits-mlp-*/model.pt")
    good = checkpoint.read_bytes()
    try:
        checkpoint.write_bytes(b"not a checkpoint")
        _clear_caches()
        at = app()
        assert not at.exception
        assert at.error and "checkpoint" in at.error[0].value
        assert not captions(at)
    finally:
        checkpoint.write_bytes(good)


def test_the_dataset_grid_follows_the_checkpoint_in_the_sidebar(
    app: Callable[..., AppTest], tmp_path: Path,
) -> None:
    """The grid's predictions are those of the selected model: switching to another checkpoint
    in the same server (caches kept) shows that model's predictions, not the recipe's."""
    import torch

    from influence_core import build_model

    recipe_run = app()
    torch.manual_seed(123)
    untrained = tmp_path / "untrained.pt"
    torch.save(build_model("mlp", (1, 8, 8), 10).state_dict(), untrained)
    mine = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT_S)
    mine.query_params.update(checkpoint=str(untrained))
    mine.run()
    assert not mine.exception and not mine.error
    assert float(mine.metric[0].value.rstrip("%")) < 50.0  # an untrained model
    predicted = [CAPTION.match(c).group(3) for c in captions(mine)]
    assert predicted != [CAPTION.match(c).group(3) for c in captions(recipe_run)]


# ---- Review, Explore, Evaluate ----------------------------------------------------------------
def review(app: Callable[..., AppTest], **query: str) -> AppTest:
    """The Review page (its first run also precomputes the attribution index)."""
    at = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT_S)
    at.query_params.update(query)
    at.switch_page("views/review.py")
    return at.run()


def log_rows(home: Path) -> list[tuple]:
    """(id, idx, action, label, annotator, model_version, undoes) of every decision, in order."""
    [db] = home.glob("decisions/*.db")
    with sqlite3.connect(db) as con:
        return con.execute("SELECT id, idx, action, label, annotator, model_version, undoes "
                           "FROM decisions ORDER BY id").fetchall()


def current_suspect(at: AppTest) -> int:
    [match] = [m for m in (re.search(r"Suspect #(\d+)", md.value) for md in at.markdown) if m]
    return int(match.group(1))


def test_review_page_shows_a_suspect_card_and_the_counter(app: Callable[..., AppTest]) -> None:
    at = review(app)
    assert not at.exception
    assert not at.error
    assert at.title[0].value == "Review"
    assert re.search(r"\d+ reviewed / \d+ in queue", at.get("progress")[0].proto.text)
    current_suspect(at)
    assert {"Relabel", "Remove", "Keep", "Undo"} <= {b.label for b in at.button}
    assert at.get("plotly_chart"), "the class probabilities are a plotly chart"


def _early_card_page() -> None:  # an AppTest script: Review's early card, drawn alone
    import streamlit as st

    from dashboard import early
    from dashboard.workspace import Selection
    from influence_core import default_data_root

    early._draw(st.empty(), Selection(data_root=str(default_data_root())), "default")


def test_the_card_before_the_index_is_the_first_card_with_its_buttons_greyed_out(
        app: Callable[..., AppTest]) -> None:
    """While the Setup step builds the index, Review shows the queue's first suspect with the
    model's probabilities and the suggestion, Relabel/Remove/Keep/Undo disabled and a line
    saying why; the full card then opens on the same suspect, and the early card is gone."""
    early = AppTest.from_function(_early_card_page, default_timeout=RUN_TIMEOUT_S).run()
    assert not early.exception and not early.error
    waiting = [b for b in early.button if b.key.startswith("wait_")]
    assert {b.label for b in waiting} == {"Relabel", "Remove", "Keep", "Undo"}
    assert all(b.disabled for b in waiting)
    assert "open when the attribution index is ready" in early.info[0].value
    assert early.get("plotly_chart")
    [card] = [md.value for md in early.markdown if "Suspect #" in md.value]
    at = review(app)
    assert int(re.search(r"Suspect #(\d+)", card).group(1)) == current_suspect(at)
    [full] = [md.value for md in at.markdown if "Suspect #" in md.value]  # only the full card
    assert full == card  # same suspect, given label and suggestion (no decision yet)
    assert not [b for b in at.button if b.key.startswith("wait_")]
    assert not at.button(key="act_keep").disabled


def test_relabel_applies_the_suggestion(app: Callable[..., AppTest], home: Path) -> None:
    """The card names the most probable class other than the given label under the current
    model's probabilities, averaged, when the model memorises its labels (the fit gate), with
    those of the checkpoints its own training kept (5 at geometric, 8 at even steps); Relabel
    without touching the box records that class."""
    from influence_core import build_model, load_checkpoint, load_problem, predict_logits, recipe
    from influence_core.audit.signals import FIT_GAP
    from influence_core.audit.suspects import memorisation_gap
    from influence_core.data.datasets import subset
    from influence_core.data.training import snapshot_path, snapshot_steps, total_steps

    at = review(app, annotator="sug")
    suspect = current_suspect(at)
    [card] = [md.value for md in at.markdown if "Suspect #" in md.value]
    given, suggested = (int(m) for m in re.search(
        r"given label \*\*(\d)\*\*.*suggested \*\*(\d)\*\*", card).groups())
    problem = load_problem(recipe("digits", "mlp"))
    one, cfg = subset(problem.train, [suspect]), problem.config
    total = total_steps(cfg, len(problem.train))

    def mean_probs(count: int, even: bool) -> torch.Tensor:
        nets = [load_checkpoint(build_model("mlp", one.shape, one.num_classes),
                                snapshot_path(cfg, step))
                for step in snapshot_steps(total, count, even)]
        return sum(predict_logits(n, one)[0].softmax(0) for n in nets) / count

    probs = predict_logits(problem.model, one)[0].softmax(0)
    if memorisation_gap(problem) > FIT_GAP:  # the fit gate: a memorising model's rule
        probs = (probs + mean_probs(5, False) + mean_probs(8, True)) / 3
    probs[given] = -1
    assert suggested == int(probs.argmax()) != given
    at.button(key="act_relabel").click().run()
    assert not at.exception
    row = log_rows(home)[-1]
    assert (row[1], row[2], row[3]) == (suspect, "relabel", suggested)
    at.button(key="act_undo").click().run()


@pytest.mark.parametrize("action", ["relabel", "remove", "keep"])
def test_a_decision_writes_a_log_row_and_undo_reverts_it(
    app: Callable[..., AppTest], home: Path, action: str
) -> None:
    at = review(app, annotator="ann")
    suspect = current_suspect(at)
    before = len(log_rows(home)) if list(home.glob("decisions/*.db")) else 0
    at.button(key=f"act_{action}").click().run()
    assert not at.exception
    rows = log_rows(home)
    assert len(rows) == before + 1
    decision_id, index, logged, label, annotator, version, _ = rows[-1]
    assert (index, logged, annotator) == (suspect, action, "ann")
    assert (label is not None) == (action == "relabel")
    assert version == (rows[-2][0] if len(rows) > 1 else 0), "the version the card was shown on"
    assert current_suspect(at) != suspect, "the queue moves on to the next suspect"

    at.button(key="act_undo").click().run()
    assert not at.exception
    undo = log_rows(home)[-1]
    assert undo[2] == "undo" and undo[6] == decision_id and undo[4] == "ann"


def test_two_annotators_in_two_sessions_lose_no_decision(
    app: Callable[..., AppTest], home: Path
) -> None:
    alice, bob = review(app, annotator="alice"), review(app, annotator="bob")
    a, b = current_suspect(alice), current_suspect(bob)
    alice.button(key="act_keep").click().run()
    bob.button(key="act_remove").click().run()  # bob's card was rendered before alice decided
    assert not alice.exception and not bob.exception
    mine = {(r[1], r[2], r[4]) for r in log_rows(home)[-2:]}
    assert mine == {(a, "keep", "alice"), (b, "remove", "bob")}
    bob.button(key="act_undo").click().run()
    alice.button(key="act_undo").click().run()
    assert [r[2] for r in log_rows(home)[-2:]] == ["undo", "undo"]


def test_review_position_comes_from_the_url(app: Callable[..., AppTest]) -> None:
    at = review(app)
    nxt = review(app, suspect=str(current_suspect(at) + 1))
    assert not nxt.exception
    assert current_suspect(nxt) == current_suspect(at) + 1


def queue_rows(at: AppTest) -> list[tuple[int, str, float]]:
    """(index, decision, suspicion) of each row of the Review queue (the bulk table), in order."""
    frame = at.dataframe[0].value
    return list(zip(frame["index"], frame["decision"], frame["suspicion"]))


def test_the_chosen_ranking_orders_the_queue_and_is_logged_with_each_decision(
    app: Callable[..., AppTest], home: Path,
) -> None:
    """Switching Review's ranking to training loss reorders the queue by suspect_scores of that
    ranking (descending), and a decision and its undo made there record "loss"."""
    from influence_core import (
        RANKINGS,
        DecisionLog,
        default_data_root,
        load_problem,
        recipe,
        suspect_scores,
    )

    at = review(app, annotator="ranker")
    default_order = [i for i, _, _ in queue_rows(at)]
    at.selectbox(key="ranking").set_value("loss").run()
    assert not at.exception and not at.error
    assert RANKINGS["loss"].help in [c.value for c in at.caption]
    rows = queue_rows(at)
    order = [i for i, _, _ in rows]
    problem = load_problem(recipe("digits", "mlp"), str(default_data_root()))
    scores = suspect_scores(problem, RANKINGS["loss"].signal).numpy()
    [db] = home.glob("decisions/*.db")
    log = DecisionLog(db, problem.train.labels, problem.train.num_classes)
    removed = [i for i, label in log.edits().items() if label is None]  # not in the queue
    log.close()
    rest = np.setdiff1d(np.arange(len(scores)), order + removed)
    assert order != default_order
    assert (np.diff(scores[order]) <= SCORE_TOL).all(), "descending training loss"
    assert scores[order].min() >= scores[rest].max() - SCORE_TOL, "the most suspect ones"
    np.testing.assert_allclose([s for _, _, s in rows], scores[order], atol=SCORE_TOL)
    first = next(i for i, decision, _ in rows if decision == "")
    assert current_suspect(at) == first
    at.button(key="act_keep").click().run()
    at.button(key="act_undo").click().run()
    assert not at.exception
    with sqlite3.connect(db) as con:
        logged = con.execute("SELECT idx, action, annotator, ranking FROM decisions "
                             "ORDER BY id DESC LIMIT 2").fetchall()[::-1]
    assert logged == [(first, "keep", "ranker", "loss"), (first, "undo", "ranker", "loss")]

    at.selectbox(key="ranking").set_value("self_influence").run()
    assert not at.exception
    frame = at.dataframe[0].value  # ordered by self-influence, refreshed under the current model
    assert (frame["suspicion"] == frame["score"]).all() and (np.diff(frame["score"]) <= 0).all()
    assert frame["index"].tolist() != order
    at.switch_page("views/dataset.py").run()
    at.switch_page("views/review.py").run()
    assert at.selectbox(key="ranking").value == "self_influence", "kept across pages"


def page(name: str, **query: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT_S)
    at.query_params.update(query)
    at.switch_page(f"views/{name}.py")
    return at.run()


def test_explore_shows_a_query_its_influences_and_a_training_card(
    app: Callable[..., AppTest],
) -> None:
    at = page("explore", query="3", train="5")
    assert not at.exception and not at.error
    headings = [md.value for md in at.markdown]
    assert any(h.startswith("**Query: test #3") for h in headings)
    assert {"**Most helpful training images**", "**Most harmful training images**"} <= set(headings)
    assert any(h.startswith("**Training image #5**") and "self-influence" in h for h in headings)
    assert len(captions(at)) >= 24 + 2 * 8 + 8  # grid, helpful + harmful, influenced queries
    inspect = [b for b in at.button if b.label == "Inspect"]
    assert len(inspect) == PAGE_SIZE
    inspect[1].click().run()
    assert not at.exception
    assert at.query_params["query"] in ("1", ["1"])


def test_explore_filters_misclassified_queries(app: Callable[..., AppTest]) -> None:
    at = page("explore", x_wrong="true")
    assert not at.exception
    grid = [re.match(r"^#\d+ · label (\S+) · pred (\S+) · \d+%$", c) for c in captions(at)]
    assert grid and all(m and m.group(1) != m.group(2) for m in grid)


def test_evaluate_names_the_commands_when_no_report_exists(
    app: Callable[..., AppTest], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dashboard import report_files

    monkeypatch.setattr(report_files, "SHIPPED_REPORTS", tmp_path / "none")
    at = page("evaluate")
    assert not at.exception and not at.error
    infos = " ".join(i.value for i in at.info)
    assert "python -m influence_core evaluate mislabel --dataset digits --model mlp" in infos
    assert "evaluate lds --dataset digits" in infos
    assert "verify-unlearning --dataset digits --model mlp" in infos
    assert at.get("plotly_chart"), "the self-influence histogram"


def test_evaluate_shows_the_shipped_reports_of_the_default_problem(
    app: Callable[..., AppTest],
) -> None:
    """A fresh demo (digits/mlp, no report of one's own) draws the reports in docs/reports:
    mislabel curves, the LDS table, and the unlearning chart from unlearning-digits-mlp."""
    at = page("evaluate")
    assert not at.exception and not at.error
    assert not at.info, [i.value for i in at.info]
    keys = [chart.proto.id for chart in at.get("plotly_chart")]
    assert len(keys) >= 4, keys
    lds = at.dataframe[0].value
    assert set(lds["source"]) == {"shipped"}
    assert {"ekfac", "index", "random"} <= set(lds["estimator"])
    assert any("unlearning-digits-mlp" in md.value for md in at.markdown)


def test_evaluate_draws_a_users_own_report(app: Callable[..., AppTest], home: Path) -> None:
    import plotly.graph_objects as go

    from influence_core.evaluation.reports import write_report

    fig = go.Figure(go.Scatter(x=[0, 0.5, 1], y=[0, 0.8, 1], name="self_influence"))
    result = {"kind": "lds", "lds": {"ekfac": 0.31, "identity": 0.05}}
    write_report(home / "reports", "mislabel_digits_mlp_regular", {"kind": "mislabel"}, "| x |",
                 {"curve": fig})
    write_report(home / "reports", "lds_digits_mlp_mine", result, "| y |", {})
    at = page("evaluate")
    assert not at.exception
    lds = at.dataframe[0].value
    mine = lds[lds["source"] == "yours"]
    assert mine["estimator"].tolist() == ["ekfac", "identity"]
    assert mine["report"].tolist() == ["lds_digits_mlp_mine"] * 2
    # the user's mislabel_digits_mlp_regular replaces the shipped report of the same name
    assert any("mislabel_digits_mlp_regular** · yours" in md.value for md in at.markdown)


def test_the_quick_evaluation_runs_from_the_page_with_progress(
    app: Callable[..., AppTest], home: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The button runs the quick evaluation (here a stand-in that reports progress and writes a
    quick_digits_mlp report, as run_quick does) and the page then draws the new report."""
    from dashboard import state
    from influence_core.evaluation.reports import write_report

    calls = []

    def fake_quick(out: Path, data_root: object = None, progress: object = None) -> dict:
        for step in range(3):
            progress(step + 1, 3, "LDS retrainings")
        calls.append(out)
        result = {"kind": "quick", "lds": {"lds": {"ekfac": 0.42}}}
        return write_report(out, "quick_digits_mlp", result, "| q |", {})

    monkeypatch.setattr(state, "run_quick", fake_quick)
    at = page("evaluate")
    at.button(key="quick_go").click().run()
    assert not at.exception
    assert calls == [home / "reports"]
    lds = at.dataframe[0].value
    assert lds[lds["report"] == "quick_digits_mlp"]["LDS"].tolist() == [0.42]
    at.run()  # the next run does not run it again
    assert len(calls) == 1


def test_reports_are_matched_to_their_problem_exactly() -> None:
    from dashboard.report_files import for_problem

    assert for_problem("lds_mnist_cnn_2seeds", "mnist", "cnn")
    assert for_problem("unlearning-mnist-cnn-relabel-refined40", "mnist", "cnn")
    assert for_problem("quick_digits_mlp", "digits", "mlp")
    assert not for_problem("lds_fashion_mnist_cnn_54subsets", "mnist", "cnn")
    assert not for_problem("mislabel_mnist_mlp_regular", "mnist", "cnn")
    assert not for_problem("bench_query_mnist_cnn", "mnist", "cnn")


def test_a_refused_decision_is_a_warning_not_a_traceback(
    app: Callable[..., AppTest], home: Path
) -> None:
    at = review(app, annotator="ann")
    suspect = current_suspect(at)
    at.button(key="act_remove").click().run()
    again = review(app, annotator="ann", suspect=str(suspect))  # the removed one, pinned
    again.button(key="act_keep").click().run()
    assert not again.exception
    assert again.warning and "is removed" in again.warning[0].value
    at.button(key="act_undo").click().run()
    assert log_rows(home)[-1][2] == "undo"


def test_next_moves_the_card_and_keeps_the_position_in_the_url(
    app: Callable[..., AppTest],
) -> None:
    at = review(app)
    first = current_suspect(at)
    at.button(key="nav_next").click().run()
    second = current_suspect(at)
    assert not at.exception and second != first
    assert at.query_params["suspect"] in (str(second), [str(second)])
    at.button(key="nav_prev").click().run()
    assert current_suspect(at) == first
