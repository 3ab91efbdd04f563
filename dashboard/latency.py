"""Interaction latencies of Explore and Review, measured through AppTest (server-side script
time; the browser adds rendering, see tests/test_browser.py for digits end to end).

    INFLUENCE_AUDIT_HOME=/tmp/home python -m dashboard.latency --dataset mnist \
        --data-root /path/with/MNIST

The first run trains and precomputes when artifacts are missing (reported as `setup`)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent / "app.py")


def _timed(results: dict[str, float], name: str, step: object) -> AppTest:
    start = time.perf_counter()
    at = step()
    results[name] = round(time.perf_counter() - start, 3)
    if at.exception:
        raise RuntimeError(f"{name}: {at.exception[0].message}")
    return at


def _page(name: str, query: dict[str, str]) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=3600)
    at.query_params.update(query)
    at.switch_page(f"views/{name}.py")
    return at.run()


def measure(query: dict[str, str]) -> dict[str, float]:
    """Seconds per interaction (each a script run), in the order a reviewer meets them."""
    res: dict[str, float] = {}
    _timed(res, "setup (train + precompute when missing)", lambda: _page("review", query))
    at = _timed(res, "review: open page", lambda: _page("review", query))
    for action in ("relabel", "remove", "keep"):
        _timed(res, f"review: {action}", lambda a=action: at.button(key=f"act_{a}").click().run())
        _timed(res, f"review: undo {action}", lambda: at.button(key="act_undo").click().run())
    _timed(res, "review: next suspect", lambda: at.button(key="nav_next").click().run())
    at = _timed(res, "explore: open page", lambda: _page("explore", query))
    inspect = [b for b in at.button if b.label == "Inspect"]
    _timed(res, "explore: inspect a query", lambda: inspect[3].click().run())
    opens = [b for b in at.button if b.label == "Card"]
    _timed(res, "explore: open a training card", lambda: opens[0].click().run())
    _timed(res, "explore: next grid page", lambda: at.pagination[0].set_value(2).run())
    _timed(res, "explore: misclassified filter",
           lambda: at.toggle(key="x_wrong").set_value(True).run())
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="mlp")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default=None, help="write the timings here as JSON")
    args = p.parse_args()
    query = {"dataset": args.dataset, "model": args.model, "annotator": "latency"}
    if args.data_root:  # the operator's own data root: allowed beside the working directory
        query["data_root"] = args.data_root
        roots = os.pathsep.join((str(Path.cwd()), args.data_root))
        os.environ.setdefault("INFLUENCE_AUDIT_ALLOWED_ROOTS", roots)
    res = measure(query)
    for name, seconds in res.items():
        print(f"{seconds:8.3f} s  {name}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
