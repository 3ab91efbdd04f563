"""Evaluate: the evaluation reports (written by `python -m influence_core evaluate ...`) as plotly
charts, the IHVP error of each estimator against the exact solve, and the distribution of
self-influence. Where a report is missing, the page names the command that writes it."""

import streamlit as st

from dashboard import frames, state, widgets

CLI = "python -m influence_core evaluate"

sel = state.selection()
st.title("Evaluate")
reports = state.reports(sel.dataset, sel.model)
problem_args = f"--dataset {sel.dataset} --model {sel.model}"
st.caption(f"Reports in `{state.reports_folder()}` for {sel.dataset}/{sel.model}")

st.subheader("Mislabel detection against inspection budget")
widgets.report_figures(reports, "mislabel_", "curve",
                       f"`{CLI} mislabel {problem_args}` (or `{CLI} quick` on digits)")

st.subheader("Linear datamodeling score (LDS)")
lds = frames.lds_table(reports)
if lds.empty:
    st.info(f"No LDS report yet. Run `{CLI} lds {problem_args}`.")
else:
    st.dataframe(lds, hide_index=True)
widgets.report_figures(reports, "lds_", "per_query", None)

st.subheader("Unlearning fidelity (Newton step against retraining)")
widgets.report_figures(reports, "unlearning_", "kl", f"`{CLI} unlearning {problem_args}`")

st.subheader("IHVP error against the exact solve")
ws = state.workspace_or_stop(sel)
if state.ihvp_requested():
    layers, errors = state.estimator_errors(ws.key, ws)
    widgets.bar_chart(errors, "relative error ‖ihvp − exact‖ / ‖exact‖", log=True)
    st.caption(f"On layer(s) {layers}: the exact solve is dense, so it is restricted to the "
               "last layers that fit.")
else:
    st.button("Compute on this model (seconds on digits)", on_click=state.request_ihvp,
              key="ihvp_go")
    st.caption("No report command writes this yet; it is computed here, on demand.")

st.subheader("Self-influence of the training set")
widgets.histogram(state.self_influence(ws.key, ws), "self-influence (log10)", log10=True)
