"""Progress reporting without knowing the UI: the core calls `progress(done, total, what)`;
the CLI passes `tqdm_progress()`, the app passes a wrapper around st.progress."""

from __future__ import annotations

from collections.abc import Callable

from tqdm.auto import tqdm

Progress = Callable[[int, int, str], None]


def silent(done: int, total: int, what: str) -> None:
    """A Progress that reports nothing."""


def tqdm_progress() -> Progress:
    """A Progress that draws one tqdm bar per distinct `what`."""
    bars: dict[str, tqdm] = {}

    def report(done: int, total: int, what: str) -> None:
        bar = bars.get(what)
        if bar is None:
            bar = bars[what] = tqdm(total=total, desc=what, leave=True, dynamic_ncols=True)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return report
