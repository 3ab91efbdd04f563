"""Evaluate: the evaluation reports of the selected problem as plotly charts (those that ship in
docs/reports and the user's own), the quick digits evaluation on a click, the IHVP error of each
estimator against the exact solve, and the distribution of self-influence."""

import streamlit as st

from dashboard import frames, report_files, state, widgets

CLI = "python -m influence_core"
QUICK_PROBLEM = ("digits", "mlp")

sel = state.selection()
st.title("Evaluate")
problem_args = f"--dataset {sel.dataset} --model {sel.model}"
if state.requested(state.QUICK):
    state.run_quick_evaluation(sel.data_root)
reports = state.reports(sel.dataset, sel.model)
st.caption(f"Reports for {sel.dataset}/{sel.model}: shipped with the app in "
           f"`{report_files.SHIPPED_REPORTS}`, and yours in `{report_files.reports_folder()}`. "
           "Each names the command that wrote it; `docs/benchmarks.md` explains them.")

if (sel.dataset, sel.model) == QUICK_PROBLEM:
    st.button("Run the quick evaluation on this machine (about half a minute)",
              on_click=state.request, args=(state.QUICK,), key="quick_go",
              help="Mislabel detection with 10% flipped labels (3 folds, 3 checkpoints) and LDS "
                   f"on 20 retrained subsets, without Kronfluence: `{CLI} evaluate quick`. "
                   "Writes quick_digits_mlp to your reports folder.")

st.subheader("Mislabel detection against inspection budget")
st.caption("Fraction of the flipped labels found when inspecting the top x% of each ranking.")
if not widgets.report_figures(reports, ("mislabel_", "quick_"), "curve"):
    st.info(f"No report for this problem yet: `{CLI} evaluate mislabel {problem_args}`.")

st.subheader("Linear datamodeling score (LDS)")
lds = frames.lds_table(reports)
if lds.empty:
    st.info(f"No LDS report for this problem yet: `{CLI} evaluate lds {problem_args}`.")
else:
    st.dataframe(lds, hide_index=True)
    widgets.report_figures(reports, ("lds_",), "per_query")

st.subheader("Unlearning against retraining")
unlearning = {n: r for n, r in reports.items() if n.startswith("unlearning")}
if not unlearning:
    st.info(f"No report for this problem yet: `{CLI} verify-unlearning {problem_args}`.")
for name, report in unlearning.items():
    st.markdown(f"**{name}** · {widgets.SOURCES.get(report['source'], '')}")
    table = frames.unlearning_table(report["result"])
    if table.empty:
        st.caption("No edit set with a retrained reference in this report.")
        continue
    widgets.unlearning_chart(table, name)
    with st.expander(f"Table: {name}"):
        st.dataframe(table, hide_index=True)
st.caption("KL ratio: KL(untouched ‖ retrained) / KL(model ‖ retrained) on the test set; above "
           "1 the edited model is closer to the retrained one than the untouched model is. The "
           "noise floor is a second retraining with another seed: no method can be measurably "
           "closer than that.")

st.subheader("Cleaning rounds")
st.caption("A simulated annotator who knows the true labels reviews a budget per round along "
           "each queue; test accuracy after each retrain (solid) and with the Newton step "
           "alone (dotted), against the clean-label model.")
if not widgets.report_figures(reports, ("rounds_",), "accuracy"):  # none for this problem
    st.caption(f"Run `{CLI} evaluate rounds {problem_args} --noise 0.1` to make one.")

st.subheader("IHVP error against the exact solve")
ws = state.workspace_or_stop(sel)
if state.requested(state.IHVP):
    layers, errors = state.estimator_errors(ws.key, ws)
    widgets.bar_chart(errors, "relative error ‖ihvp − exact‖ / ‖exact‖", log=True)
    st.caption(f"On layer(s) {layers}: the exact solve is dense, so it is restricted to the "
               "last layers that fit.")
else:
    st.button("Compute on this model (seconds on digits)", on_click=state.request,
              args=(state.IHVP,), key="ihvp_go")
    st.caption("Computed here, on demand, on the loaded model.")

st.subheader("Self-influence of the training set")
widgets.histogram(state.self_influence(ws.key, ws), "self-influence (log10)", log10=True)
