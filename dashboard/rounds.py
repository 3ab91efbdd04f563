"""Review's "Retrain on reviewed labels": the next cleaning round, trained as a background job
with a progress bar (influence_core.retrain_reviewed); the page then reopens on that round.
"Calibrate the Newton step" measures the step's damping on the model under review
(influence_core.calibrate_review), also as a job; the step follows it from then on."""

from __future__ import annotations

import streamlit as st

from dashboard import state
from dashboard.workspace import Selection, Workspace
from influence_core import calibrate_review, refresh_calibration, retrain_reviewed

HELP = ("Train the recipe again on the current labels (relabels applied, removed examples left "
        "out), then review that model: its index and a queue without what was already "
        "reviewed. Every round's decisions stay in the same log; earlier rounds stay on disk.")
CALIBRATE_HELP = (
    "Measure, on this model, which damping brings the Newton step closest to real retraining: "
    "held-out edits (the 2% highest-loss training images and a random 2% removed; the 2% "
    "highest-loss and the next 2% relabelled to the model's best other class) are each "
    "retrained for real (four trainings of the recipe), then stepped at every damping of a grid. "
    "Each edit kind takes its best damping; a kind where none beats doing nothing gets no step. "
    "Kept with the model; every later session on it uses it.")


def round_number(ws: Workspace) -> int:
    """The cleaning round the workspace reviews (1: the recipe's own model)."""
    return int(ws.key[-1])


def retrain_ui(sel: Selection, ws: Workspace) -> None:
    """The button, and the retrain job while it is requested; a finished retrain reruns the
    page, which opens the new round. Above it: how the Newton step between retrains is damped
    (per edit kind, or skipped for a kind), as the session resolved it."""
    calibrate_ui(sel, ws)
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


def calibrate_ui(sel: Selection, ws: Workspace) -> None:
    """How the Newton step between retrains is damped (per edit kind, or skipped for a kind), and
    the button that calibrates it on this model when it is not yet."""
    if sel.damping is None and refresh_calibration(ws.session):  # calibrated elsewhere since
        state.forget_states(ws)
        st.rerun()
    rule = ws.session.rule
    if rule is None:  # the identity method: no damping
        return
    cols = st.columns([5, 2], vertical_alignment="center")
    cols[0].caption(f"Newton step between retrains · {rule.describe()}")
    why = ("a damping given in the sidebar" if sel.damping is not None else
           "a loaded checkpoint: there is no recipe run to repeat" if sel.checkpoint else
           f"{sel.method} cannot change its damping without a refit"
           if not hasattr(ws.session.curvature, "rebased") else
           "already calibrated on this model" if rule.calibrated and not rule.from_base else "")
    if not cols[1].button("Calibrate the Newton step", disabled=bool(why), key="calibrate",
                          help=f"{CALIBRATE_HELP} Not now: {why}." if why else CALIBRATE_HELP):
        return

    def target(progress: object) -> object:
        calibrated = calibrate_review(ws.session, progress)
        state.forget_states(ws)  # every cached model was stepped under the old damping
        return calibrated

    try:
        state.run_job(("calibrate", *ws.key), target, "Calibrating the Newton step")
    except ValueError as exc:
        st.error(f"Not calibrated: {exc}")
        return
    st.rerun()
