"""Drive the demo that `make demo` serves, in Debian's chromium, as a new user would: the Dataset,
Explore, Review and Evaluate pages render without an exception; Review keeps one suspect and the
decision is still in the log after a reload. Fails on any exception shown on a page or written
to the server's log.

    python .ci/demo_smoke.py http://127.0.0.1:8501 --log demo.log [--screenshots DIR]

Run with the dev virtualenv's Python (Playwright); the server is the runtime-only demo."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from test_browser import (  # noqa: E402  (tests/ is put on the path above)
    CHROMIUM,
    CHROMIUM_ARGS,
    counter,
    decisions_table,
    settle,
    suspect,
)

FIRST_RENDER_S = 600  # the first Review render fits the curvature and the suspect ranking
RERUN_S = 60


def check_log(log: Path | None) -> None:
    if log is not None and "Traceback" in (text := log.read_text(errors="replace")):
        start = text.index("Traceback")
        raise SystemExit(f"the server logged an exception:\n{text[start:start + 3000]}")


def visit(page: object, url: str, name: str, images: bool, shots: Path | None) -> float:
    start = time.perf_counter()
    page.goto(url)
    settle(page, FIRST_RENDER_S, images=images)
    if shots:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    took = time.perf_counter() - start
    print(f"{name}: rendered without an exception in {took:.1f} s", flush=True)
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--log", type=Path, default=None,
                    help="the server's log, checked for tracebacks")
    ap.add_argument("--screenshots", type=Path, default=None)
    args = ap.parse_args()
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        base = args.url.rstrip("/")
        visit(page, base, "dataset", True, args.screenshots)
        assert page.locator('[data-testid="stImage"] img').count() > 0, "Dataset shows no image"
        visit(page, f"{base}/explore?query=3", "explore", True, args.screenshots)
        assert page.get_by_text("Most helpful training images").is_visible()
        visit(page, f"{base}/review?annotator=ci-smoke", "review", True, args.screenshots)
        done, kept = counter(page), suspect(page)
        page.get_by_role("button", name="Keep").click()
        page.get_by_text(f"{done + 1} reviewed", exact=False).first.wait_for(
            timeout=RERUN_S * 1000)
        settle(page, RERUN_S)
        page.reload()
        settle(page, RERUN_S)
        after = counter(page)
        assert after == done + 1, f"after a reload: {after} reviewed, not {done + 1}"
        table = decisions_table(page)
        assert re.search(rf"\b{kept} keep \S* ?ci-smoke\b", table), table
        print(f"review: kept suspect #{kept}; the decision survived a reload", flush=True)
        visit(page, f"{base}/evaluate", "evaluate", False, args.screenshots)
        charts = page.locator('[data-testid="stPlotlyChart"]').count()
        assert charts > 0, "Evaluate shows no report chart on a fresh demo"
        print(f"evaluate: {charts} charts", flush=True)
        browser.close()
    check_log(args.log)
    print("demo smoke passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
