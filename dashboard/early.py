"""Review's first card while the Setup step still builds the attribution index: the first
suspect of the chosen ranking (influence_core.early_card) with its image, given label, the
model's probabilities and the suggested label, and the decision buttons greyed out until the
index (the evidence and the Newton step's curvature) is ready. The page then draws the full
card in its place; the early card is never shown again for that workspace in this server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from dashboard import images, state, widgets
from dashboard.workspace import Selection
from influence_core import INPUT_ERRORS, current_round, early_card

WAIT = ("Relabel, Remove and Keep open when the attribution index is ready: it supplies the "
        "training images that support and oppose this label, and the Newton step that updates "
        "the model after each decision. The bar below shows its progress.")


@contextmanager
def first_card(sel: Selection, ranking: str) -> Iterator[None]:
    """Draw the early card while the block runs (the page opens the workspace in it), then take
    it off the page. Draws nothing when the workspace is already open in this server, for a
    cleaning round, when the queue needs the index, or on bad input (the page's
    workspace_or_stop then says what is wrong)."""
    holder = st.empty()
    try:
        _draw(holder, sel, ranking)
        yield
    finally:
        holder.empty()


def _draw(holder: object, sel: Selection, ranking: str) -> None:
    try:
        problem = state.get_problem(sel.dataset, sel.model, sel.data_root, sel.checkpoint)
        if current_round(problem) is not None or (*sel.key, ranking, 1) in state.opened():
            return
        pinned = state.url_int(state.SUSPECT)
        card = state.run_job(("early", *sel.problem_key, ranking, pinned), lambda p: early_card(
            problem, ranking, pinned, p), f"Setup: the {ranking} suspect ranking")
    except INPUT_ERRORS:
        return
    if card is None:
        return
    names = problem.train.class_names
    with holder.container(border=True):
        st.markdown(f"**Suspect #{card.index}** · given label **{names[card.label]}** · "
                    f"suggested **{names[card.suggested]}**", help=card.suggestion)
        image, chart = st.columns([1, 2])
        [big] = state.thumbnails(sel.dataset, sel.data_root, "train", (card.index,),
                                 images.LARGE_PX)
        image.image(big, caption=f"#{card.index} · given label {names[card.label]}",
                    width=images.LARGE_PX)
        with chart:
            widgets.probability_chart(card.probs.tolist(), names, card.label, key="early_probs")
        st.info(WAIT)
        widgets.review_buttons(lambda action: None, lambda: None, False, enabled=False)
