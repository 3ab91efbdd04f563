"""Review's "Retrain on reviewed labels": the next cleaning round, trained as a background job
with a progress bar (influence_core.retrain_reviewed); the page then reopens on that round."""

from __future__ import annotations

import streamlit as st

from dashboard import state
from dashboard.workspace import Selection, Workspace
from influence_core import retrain_reviewed

HELP = ("Train the recipe again on the current labels (relabels applied, removed examples left "
        "out), then review that model: its index and a queue without what was already "
        "reviewed. Every round's decisions stay in the same log; earlier rounds stay on disk.")


def round_number(ws: Workspace) -> int:
    """The cleaning round the workspace reviews (1: the recipe's own model)."""
    return int(ws.key[-1])


def retrain_ui(sel: Selection, ws: Workspace) -> None:
    """The button, and the retrain job while it is requested; a finished retrain reruns the
    page, which opens the new round. Above it: how the Newton step between retrains is damped
    (per edit kind, or skipped for a kind), as the session resolved it."""
    if ws.session.rule is not None:
        st.caption(f"Newton step between retrains · {ws.session.rule.describe()}")
    version = ws.session.log.version()
    trained_on = ws.problem.meta.get("log_version", 0)  # the log version of the round's model
    st.button("Retrain on reviewed labels", on_click=state.request, args=(state.RETRAIN,),
              disabled=bool(sel.checkpoint) or version <= trained_on, help=HELP, key="retrain")
    if not state.requested(state.RETRAIN):
        return
    base = state.get_problem(sel.dataset, sel.model, sel.data_root, sel.checkpoint)
    try:
        rnd = state.run_job(("retrain", *sel.problem_key, version),
                            lambda p: retrain_reviewed(base, p),
                            f"Round {round_number(ws) + 1}: retraining on the reviewed labels")
    except ValueError as exc:
        st.error(f"Not retrained: {exc}")
        return
    finally:
        state.request(state.RETRAIN, False)
    if rnd.number != round_number(ws):
        st.rerun()
