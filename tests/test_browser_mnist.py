"""Interaction latency of Review and Explore on MNIST (mnist/cnn, 60k training images) in Debian's
chromium, after precompute: each interaction timed from the key press or click until the script
run has finished and every image has loaded. Reported, not asserted (README, "Dashboard latency").

Before each Review action the test looks at the card for INFLUENCE_AUDIT_THINK_S seconds
(default 1.5; an annotator reads the image and the evidence first): the app uses that time to
prefetch what the buttons need (influence_core.audit.review_cache). THINK_S=0 measures the worst
case, a click the moment a card appears.

    INFLUENCE_AUDIT_LATENCY_HOME=/path/with/precomputed/artifacts \
        pytest -m slow tests/test_browser_mnist.py -s

Without INFLUENCE_AUDIT_LATENCY_HOME the first page load trains and precomputes (minutes)."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    SERVER_START_S,
    _free_port,
    _wait_healthy,
    counter,
    playwright_api,
    settle,
    suspect,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SETUP_S = 1800  # first load without prepared artifacts: train mnist/cnn and precompute
REPEATS = 3
THINK_S = float(os.environ.get("INFLUENCE_AUDIT_THINK_S", "1.5"))


@pytest.fixture(scope="module")
def mnist_server(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = os.environ.get("INFLUENCE_AUDIT_LATENCY_HOME") or str(tmp_path_factory.mktemp("home"))
    log = (Path(tmp_path_factory.mktemp("log")) / "streamlit.log").open("w")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard/app.py",
         "--server.headless", "true", "--server.address", "127.0.0.1",
         "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env={**os.environ, "INFLUENCE_AUDIT_HOME": home,  # may read the data root
                       "INFLUENCE_AUDIT_ALLOWED_ROOTS": f"{ROOT}{os.pathsep}{data_root}"},
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, SERVER_START_S)
        yield f"{url}/{{page}}?dataset=mnist&model=cnn&data_root={data_root}&annotator=lat"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


def _time(page: object, action: object, wait: object = None, images: bool = True,
          think: float = 0.0) -> float:
    time.sleep(think)  # not timed: the annotator looks at the card
    start = time.perf_counter()
    action()
    if wait is not None:
        wait()
    settle(page, 60, images=images)
    return time.perf_counter() - start


# long: one browser session timed click by click, in the order a user works
def test_review_and_explore_latency_on_mnist(mnist_server: str, tmp_path: Path) -> None:
    out: dict[str, list[float]] = {}
    with playwright_api().sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        start = time.perf_counter()
        page.goto(mnist_server.format(page="review"))
        settle(page, SETUP_S)
        out["review: first load (setup when missing)"] = [time.perf_counter() - start]

        def until_counter(n: int):
            return lambda: page.get_by_text(f"{n} reviewed", exact=False).first.wait_for(
                timeout=60_000)

        start_count = counter(page)
        for _ in range(REPEATS):
            done = counter(page)
            out.setdefault("review: relabel (L)", []).append(
                _time(page, lambda: page.keyboard.press("l"), until_counter(done + 1),
                      think=THINK_S))
            out.setdefault("review: undo (U)", []).append(
                _time(page, lambda: page.keyboard.press("u"), until_counter(done), think=THINK_S))
            out.setdefault("review: remove (button)", []).append(_time(
                page, lambda: page.get_by_role("button", name="Remove").click(),
                until_counter(done + 1), think=THINK_S))
            out.setdefault("review: undo (button)", []).append(_time(
                page, lambda: page.get_by_role("button", name="Undo").click(),
                until_counter(done), think=THINK_S))
            before = suspect(page)
            out.setdefault("review: next suspect (N)", []).append(_time(
                page, lambda: page.keyboard.press("n"),
                lambda b=before: page.wait_for_function(
                    f"() => !document.body.innerText.includes('Suspect #{b}')", timeout=60_000),
                think=THINK_S))

        assert counter(page) == start_count, "every decision was undone again"
        for k in range(REPEATS):  # by the sidebar's navigation, as a user switches pages
            out.setdefault("explore: open page (sidebar)", []).append(_time(
                page, lambda: page.get_by_test_id("stSidebarNav").get_by_text(
                    "Explore", exact=True).click(),
                lambda: page.get_by_text("Inspect", exact=True).first.wait_for(timeout=60_000)))
            if k < REPEATS - 1:
                page.get_by_test_id("stSidebarNav").get_by_text("Review", exact=True).click()
                settle(page, 120)
        for k in range(REPEATS):
            out.setdefault("explore: inspect a query", []).append(_time(
                page, lambda k=k: page.get_by_role("button", name="Inspect").nth(k + 1).click()))
            out.setdefault("explore: open a training card", []).append(_time(
                page, lambda k=k: page.get_by_role("button", name="Card").nth(k).click()))
            out.setdefault("explore: next grid page", []).append(_time(
                page, lambda: page.get_by_test_id("stPaginationNext").click()))
        browser.close()
    report = {name: {"median_s": round(statistics.median(v), 3), "max_s": round(max(v), 3),
                     "n": len(v)} for name, v in out.items()}
    report["think_s"] = THINK_S
    folder = Path(os.environ.get("INFLUENCE_AUDIT_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    out_file = folder / f"latency_mnist_browser_think{THINK_S:g}.json"
    out_file.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


# long: one browser session from an empty artifacts folder, watched until the first card
def test_time_to_the_first_card_with_nothing_cached(data_root: Path, tmp_path: Path) -> None:
    """mnist/cnn in a fresh artifacts folder: the seconds from opening Review (the app's first
    page for a newly chosen dataset and model) until a suspect card is on screen, and until its
    decision buttons open (the same suspect), with the progress bar's texts seen on the way
    (each names its stage). Reported in first_card_mnist_browser.json in
    INFLUENCE_AUDIT_SCREENSHOTS (else a temporary folder)."""
    home = Path(os.environ.get("INFLUENCE_AUDIT_FIRST_CARD_HOME") or tmp_path / "home")
    assert not (home / "models").exists(), "the home must start with nothing cached"
    log = (tmp_path / "streamlit.log").open("w")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard/app.py",
         "--server.headless", "true", "--server.address", "127.0.0.1",
         "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env={**os.environ, "INFLUENCE_AUDIT_HOME": str(home),
                       "INFLUENCE_AUDIT_ALLOWED_ROOTS": f"{ROOT}{os.pathsep}{data_root}"},
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    texts: list[str] = []
    try:
        _wait_healthy(url, proc, SERVER_START_S)
        with playwright_api().sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            start = time.perf_counter()
            page.goto(f"{url}/review?dataset=mnist&model=cnn&data_root={data_root}")
            seconds = _watch(page, start, texts, lambda: page.get_by_text("Suspect #").count())
            early = suspect(page)
            decisions = _watch(page, start, texts, lambda: page.locator(
                "button:has-text('Keep'):not([disabled])").count())
            settle(page, 120)
            first = suspect(page)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()
    assert "Traceback" not in (tmp_path / "streamlit.log").read_text()
    report = {"kind": "first_card_browser", "dataset": "mnist", "model": "cnn",
              "seconds": round(seconds, 1), "decisions_seconds": round(decisions, 1),
              "first_suspect": first, "early_suspect": early, "same_suspect": early == first,
              "progress_texts": [f"{t} s: {text}" for t, text in texts]}
    folder = Path(os.environ.get("INFLUENCE_AUDIT_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "first_card_mnist_browser.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    assert any("suspect ranking" in t for _, t in texts), texts
    assert seconds <= decisions and early == first


def _watch(page: object, start: float, texts: list, done: object) -> float:
    """Poll the page until `done()` is true, keeping each new progress-bar text with its second
    (the count dropped); fail on an error message or past SETUP_S. Returns the seconds taken."""
    while not done():
        assert time.perf_counter() - start < SETUP_S, "not within the limit"
        errors = page.get_by_test_id("stAlertContentError")
        assert not errors.count(), errors.first.inner_text()
        bar = page.get_by_test_id("stProgress")
        if bar.count():
            text = re.sub(r": \d+ of \d+$", "", bar.first.inner_text().strip())  # the count
            if text and (not texts or texts[-1][1] != text):
                texts.append((round(time.perf_counter() - start), text))
        time.sleep(0.5)
    return time.perf_counter() - start
