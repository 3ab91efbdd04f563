"""Review: the suspect queue in the chosen ranking's order, one card at a time (relabel / remove /
keep / undo), bulk mode and export. A decision is committed to the durable log first, with its
ranking; the next run applies the Newton step (cached per log version) and re-ranks the queue."""

import streamlit as st

from dashboard import claims, early, frames, images, rounds, state, tiles, widgets
from influence_core import (
    DEFAULT_RANKING,
    RANKINGS,
    checkpoint_bytes,
    current_label,
    has_decision,
    is_removed,
    labels_csv,
    recent_decisions,
    review_progress,
)

sel = state.selection()
st.title("Review")
ranking = widgets.ranking_ui({k: r.help for k, r in RANKINGS.items()}, DEFAULT_RANKING,
                             state.RANKING)
with early.first_card(sel, ranking):  # on screen while the Setup step builds the index
    ws = state.workspace_or_stop(sel, ranking)
if ws.session.ranking != ranking:
    st.info(f"{widgets.ranking_name(ranking)} is not computed for this training set (too large, "
            f"a subset, or a retrained round): the queue is ordered by "
            f"{widgets.ranking_name(ws.session.ranking)}.")
audit = state.audit_state(ws)
version, names = audit.version, ws.problem.train.class_names
frame = state.queue(ws.key, version, ws)

label, differs = widgets.queue_filter_ui(names, (state.QUEUE_LABEL, state.QUEUE_DIFFERS))
rows = frames.filter_queue(frame, label, differs)
done, total = review_progress(ws.session)
st.progress(min(done / max(total, 1), 1.0),
            text=f"{done} reviewed / {total} in queue · round {rounds.round_number(ws)} · "
                 f"model version {version}")
rounds.retrain_ui(sel, ws)
current = claims.current_suspect(rows, ws.key)
if message := state.notice():
    st.warning(message)


@st.fragment
def card(version: int) -> None:
    if ws.session.log.version() != version:  # a decision was committed: re-rank the page
        st.rerun(scope="app")
    i = claims.current_suspect(rows, ws.key)  # from the URL: Previous/Next rerun only this card
    given = current_label(audit, i)
    ev = ws.cache.evidence(i, given)  # thread-safe LRU, prefetched
    before, after = frames.neighbours(rows, i)
    nav = st.columns([1, 1, 6], vertical_alignment="center")
    nav[0].button("Previous", shortcut="b", on_click=state.set_url, args=(state.SUSPECT, before),
                  disabled=before is None, key="nav_prev")
    nav[1].button("Next", shortcut="n", on_click=state.set_url, args=(state.SUSPECT, after),
                  disabled=after is None, key="nav_next")
    probs = state.train_probs(ws.key, version, i, ws)
    suggested = ws.cache.suggested(audit, i)
    nav[2].markdown(f"**Suspect #{i}** · given label **{names[given]}** · "
                    f"suggested **{names[suggested]}**", help=ws.cache.suggester.describe())
    image, chart = st.columns([1, 2])
    [big] = state.thumbnails(sel.dataset, sel.data_root, "train", (i,), images.LARGE_PX)
    image.image(big, caption=f"#{i} · given label {names[given]}", width=images.LARGE_PX)
    with chart:
        widgets.probability_chart(probs.tolist(), names, given)
    for title, (idx, scores) in (("Most support the given label", ev.support),
                                 ("Most oppose the given label", ev.oppose)):
        st.markdown(f"**{title}**")
        widgets.tiles(*tiles.train_tiles(sel, ws, idx.tolist(), scores.tolist()),
                      width=images.THUMB_PX)
    target = st.selectbox("Relabel to", range(len(names)), index=suggested,
                          format_func=lambda c: names[c], key=state.RELABEL_TO.format(i))
    if is_removed(audit, i):
        st.info(f"#{i} is removed from the training set; Undo restores it.")
        return
    if target != given:
        widgets.preview_text(f"Relabel → {names[target]}",
                             state.edit_preview(ws.key, version, i, "relabel", target, ws))
    widgets.preview_text("Remove", state.edit_preview(ws.key, version, i, "remove", None, ws))
    if claims.alone(ws.key):  # the next click's states, evidence and previews
        state.prefetch(ws, i, after)


if current is None:
    st.success("Every suspect matching these filters has been reviewed.")
else:
    with st.container(border=True):
        card(version)
        # Outside the fragment: a decision reruns the whole page once (counter, re-ranked queue);
        # the suspect is read from the URL when clicked, so Previous/Next inside the card count.
        widgets.review_buttons(
            on_decide=lambda action: state.decide(ws, action, claims.current_suspect(rows, ws.key),
                                                  version, sel.annotator),
            on_undo=lambda: (claims.release(),
                             state.undo_last_decision(ws, version, sel.annotator)),
            can_undo=has_decision(ws.session.log, sel.annotator),
        )

st.subheader("Recent decisions")
st.table(recent_decisions(ws.session.log), hide_index=True)

with st.expander("Bulk mode: select rows, apply one action"):
    st.dataframe(rows, key=state.BULK_TABLE, on_select="rerun", selection_mode="multi-row",
                 hide_index=True, height=300)
    action, apply = st.columns([2, 1], vertical_alignment="bottom")
    action.selectbox("Action (relabel: to each row's alternative)", ["keep", "remove", "relabel"],
                     key=state.BULK_ACTION)
    apply.button("Apply to selected rows", on_click=state.apply_bulk,
                 args=(ws, rows, version, sel.annotator), key="bulk_apply")

st.subheader("Export")
csv, log, model = st.columns(3)
csv.download_button("Cleaned labels (CSV)", lambda: labels_csv(ws.session.log),
                    file_name="labels.csv", mime="text/csv", on_click="ignore")
log.download_button("Decision log (CSV)", lambda: recent_decisions(ws.session.log, None).to_csv(),
                    file_name="decisions.csv", mime="text/csv", on_click="ignore")
model.download_button("Updated checkpoint", lambda: checkpoint_bytes(audit),
                      file_name="model.pt", on_click="ignore")
