"""A long computation (training, the Setup step's precompute) in a background thread.

A click reruns the script and stops the polling loop (`wait`), never the computation: the job
object is held in st.cache_resource (dashboard.state) and polled again by the next run."""

from __future__ import annotations

import threading
from collections.abc import Callable

import streamlit as st

from influence_core import Progress


class Job:
    """One long computation in a background thread, fed a progress callback. A click that reruns
    the script stops the polling loop in `wait`, never the computation itself."""

    def __init__(self, target: Callable[[Progress], object], text: str) -> None:
        self.fraction, self.title, self.text = 0.0, text, text
        self.result, self.error = None, None
        self.finished = threading.Event()
        threading.Thread(target=self._run, args=(target,), daemon=True).start()

    def _report(self, done: int, total: int, what: str) -> None:
        self.fraction = min(done / max(total, 1), 1.0)
        self.text = f"{self.title} · {what}: {done} of {total}"  # the stage and its step

    def _run(self, target: Callable[[Progress], object]) -> None:
        try:
            self.result = target(self._report)
        except Exception as exc:  # re-raised in the script thread by `wait`
            self.error = exc
        finally:
            self.finished.set()


def wait(job: Job, forget: Callable[[], None]) -> object:
    """Draw the job's progress bar until it finishes; return its result, or call `forget` (drop
    the cached job, so a retry starts anew) and re-raise its error."""
    bar = st.empty()
    while not job.finished.wait(0.5):  # a redraw costs the browser too
        bar.progress(job.fraction, text=job.text)
    bar.empty()
    if job.error is not None:
        forget()
        raise job.error
    return job.result
