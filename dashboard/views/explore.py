"""Explore: the test set as a paginated, filterable grid of queries. Inspect one (or upload an
image) to see its prediction and the training images that most helped and most harmed it; open
a training image for its card: self-influence, the queries it moves most, a link to review it."""

import streamlit as st

from dashboard import frames, images, state, tiles, widgets
from influence_core import INPUT_ERRORS, current_label

PAGE_SIZE = 24  # thumbnails per grid page (streamlit#12090: many elements render slowly)

sel = state.selection()
st.title("Explore")
ws = state.workspace_or_stop(sel)
audit = state.audit_state(ws)
names = ws.problem.test.class_names
frame = state.test_frame(ws.key, audit.version, ws)

label, wrong, confidence = widgets.explore_filter_ui(
    names, (state.EX_LABEL, state.EX_WRONG, state.EX_CONF), state.reset_page(state.EX_PAGE))
jump, upload = st.columns([1, 2], vertical_alignment="bottom")
jump.number_input("Jump to test index", 0, len(frame) - 1, value=None, key=state.EX_JUMP,
                  on_change=state.jump_to_query, placeholder="index")
uploaded = upload.file_uploader("Or upload your own image", type=["png", "jpg", "jpeg", "bmp"],
                                key=state.EX_UPLOAD)

query = state.url_int(state.QUERY)
if uploaded is not None:
    try:
        result = state.explain_upload(ws.key, uploaded.getvalue(), ws)
    except INPUT_ERRORS as exc:  # not an image, truncated, too large
        st.error(f"Cannot use {uploaded.name}: {exc}")
        st.stop()
    image, title = uploaded.getvalue(), "your image"
elif query is not None:
    result = state.explain_test(ws.key, query, ws)
    [image] = state.thumbnails(sel.dataset, sel.data_root, "test", (query,), images.LARGE_PX)
    title = f"test #{query} · label {names[int(frame['label'].iloc[query])]}"
if uploaded is not None or query is not None:
    pred, probs, helpful, harmful = result
    with st.container(border=True):
        st.markdown(f"**Query: {title}** · prediction **{names[pred]}** "
                    "(scores on the base checkpoint; positive = helped this prediction)")
        left, right = st.columns([1, 2])
        left.image(image, width=images.LARGE_PX // 2 * 3 // 2)
        with right:
            widgets.probability_chart(probs.tolist(), names, None)
        for heading, (idx, scores) in (("Most helpful training images", helpful),
                                       ("Most harmful training images", harmful)):
            st.markdown(f"**{heading}**")
            widgets.tiles(*tiles.train_tiles(sel, ws, idx.tolist(), scores.tolist()),
                          width=images.THUMB_PX, ids=idx.tolist(),
                          on_click=lambda i: state.set_url(state.TRAIN_CARD, i),
                          key=heading[5:12])

card = state.url_int(state.TRAIN_CARD)
if card is not None:
    with st.container(border=True):
        st.markdown(f"**Training image #{card}** · label {names[current_label(audit, card)]} · "
                    f"self-influence {state.self_influence(ws.key, ws)[card]:.4g} "
                    f"(rank {state.self_influence_rank(ws.key, ws)[card] + 1})")
        qidx, qscores = state.influenced(ws.key, card, ws)
        st.caption("The test queries whose loss it moves most (+ lowers, − raises)")
        widgets.tiles(*tiles.test_tiles(sel, frame, qidx.tolist(), qscores.tolist()),
                      width=images.THUMB_PX)
        st.page_link("views/review.py", label=f"Review training image #{card}",
                     icon=":material/fact_check:", query_params={state.SUSPECT: str(card)})

rows = frames.filter_tests(frame, label, wrong, confidence)
if rows.empty:
    st.info("No test example matches these filters.")
    st.stop()
start, stop = widgets.pager_ui(len(rows), PAGE_SIZE, key=state.EX_PAGE)
page = rows.iloc[start:stop]
ids = page["index"].tolist()
widgets.tiles(*tiles.test_tiles(sel, frame, ids, None), width=images.THUMB_PX,
              on_click=lambda i: state.set_url(state.QUERY, i), ids=ids, button_label="Inspect",
              key="grid")
