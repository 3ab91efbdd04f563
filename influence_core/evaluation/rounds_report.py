"""The cleaning-rounds report's text and figure (evaluation.cleaning_rounds writes the numbers)."""

from __future__ import annotations

from .cleaning_rounds import mean_present
from .round_rankings import EARLIER_QUEUE_RANKING as EARLIER
from .round_rankings import QUEUE_TEXT


def _num(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _queues_text(result: dict) -> str:
    """What each queue of the report is, for the queues it ran."""
    text = {"app": "app = the Review page's queue (round 1: the default ranking of the noisy "
                   f"model, here `{', '.join(result['derived']['app_signals'])}`; later rounds: "
                   f"{QUEUE_TEXT[result['setting'].get('queue_ranking', EARLIER)]})",
            "cleanlab": "cleanlab = cleanlab's ranking of 5-fold out-of-sample probabilities "
                        "on the round's labels",
            "random": "random = a seeded order",
            "perfect": "perfect = every decision on a flipped example while any is left (the "
                       "most a queue can repair within the budget)"}
    return ", ".join(text[q] for q in result["summary"] if q in text)


def _demand_text(d: dict) -> str:
    """The share of each queue's decisions that landed on a flip, and what closing the goal's
    fraction of the gap asks (evaluation.round_goal)."""
    point = "{queue} round {round} ({gap}, {left} flips left)"

    def where(p: dict) -> str:
        return point.format(queue=p["queue"], round=p["round"], gap=_num(p["gap_closed"], 3),
                            left=_num(p["flips_left"], 0))

    text = ("Share of the decisions that landed on a flip, both rounds: "
            + ", ".join(f"{q} {_num(v, 3)}" for q, v in d["share_on_flips"].items())
            + f". Closing {d['target']:g} of the gap: ")
    if d["reached"] is None:
        return text + "no queue or round here reached it."
    if not d["ordered"]:
        return text + (f"{where(d['reached'])} reached it while {where(d['fewest_short'])} "
                       "did not, with fewer flips left: no estimate.")
    return text + (f"about {_num(d['flips_left_at_target'], 0)} flips left, "
                   f"{_num(d['share_at_target'], 3)} of the decisions on flips (a line between "
                   f"{where(d['fewest_short'])} and {where(d['reached'])}).")


def rounds_markdown(result: dict) -> str:
    s = result["setting"]
    refs = {k: mean_present([r[k] for r in result["seeds"]]) for k in
            ("accuracy_noisy", "accuracy_clean", "noise_floor", "clean_disagreement", "num_test")}
    lines = [f"# Cleaning rounds: {s['dataset']}/{s['model']}, {s['noise']:g} {s['noise_kind']} "
             f"noise, budget {s['budget']:g} of N per round, seeds {s['seeds']}", "",
             f"Test accuracy (mean over seeds): noisy model {_num(refs['accuracy_noisy'])}, "
             f"clean-label model {_num(refs['accuracy_clean'])}; noise floor (two clean "
             f"trainings, different seeds) {_num(refs['noise_floor'])}, their test predictions "
             f"differ on {_num(refs['clean_disagreement'])} of the {refs['num_test']:.0f} test "
             f"images (one image: {_num(1 / refs['num_test'])} of accuracy). Gap closed = "
             "(accuracy - noisy) / (clean - noisy), per seed, then averaged.", "",
             f"Queues: {_queues_text(result)}; each leaves out what was reviewed. The "
             "annotator relabels flipped examples to their true label and keeps the rest.", "",
             "| queue | round | flips fixed | flips left | acc. Newton step | acc. retrained | "
             "gap closed (Newton) | gap closed (retrained) |", "|---" * 8 + "|"]
    for queue, rows in result["summary"].items():
        lines += [f"| {queue} | {r['round']} | {_num(r['flips_fixed'], 1)} | "
                  f"{_num(r['flips_left'], 1)} | {_num(r['accuracy_newton'])} | "
                  f"{_num(r['accuracy_retrained'])} | {_num(r['gap_closed_newton'], 3)} | "
                  f"{_num(r['gap_closed_retrained'], 3)} |" for r in rows]
    if pruned := result.get("derived", {}).get("pruned_retrains"):
        lines += ["", "The app queue's last retrain again, leaving out the top f x N of the "
                  "retrained model's unreviewed queue as well (a measurement; the app's retrain "
                  f"does not do it), seeds {pruned['seeds']}: plain retrain gap closed "
                  f"{_num(pruned['plain'], 3)}; "
                  + "; ".join(f"f = {k}: {_num(v, 3)} ({_num(pruned[f'{k}_flips_left_out'], 2)}"
                              " of the left-out flipped)" for k, v in pruned.items()
                              if f"{k}_flips_left_out" in pruned) + "."]
    if demand := result.get("derived", {}).get("goal_demand"):
        lines += ["", _demand_text(demand)]
    if kept := result.get("seeds_from_earlier_report"):
        lines += ["", f"Seeds {kept} were taken from the earlier report of the same setting and "
                  "queues, not run again (the command reuses them; `--rerun-seeds` runs them)."]
    return "\n".join([*lines, "", f"Command: `{result['command']}`", ""])


def rounds_figure(result: dict) -> object:
    """Test accuracy per round (mean over seeds), per queue: after the retrain (solid) and after
    the Newton step alone (dotted, same colour); round 0 is the noisy model, the dashed line
    the clean-label model."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    fig = go.Figure()
    noisy = mean_present([s["accuracy_noisy"] for s in result["seeds"]])
    for k, (queue, rows) in enumerate(result["summary"].items()):
        colour = qualitative.Plotly[k % len(qualitative.Plotly)]
        x = [0] + [r["round"] for r in rows]
        for key, dash, what in (("accuracy_retrained", "solid", "retrained"),
                                ("accuracy_newton", "dot", "Newton step only")):
            fig.add_trace(go.Scatter(x=x, y=[noisy] + [r[key] for r in rows],
                                     mode="lines+markers", name=f"{queue}: {what}",
                                     line={"color": colour, "dash": dash}))
    clean = mean_present([s["accuracy_clean"] for s in result["seeds"]])
    fig.add_hline(y=clean, line_dash="dash", annotation_text="clean labels")
    fig.update_layout(xaxis_title="round (0: the noisy model)", yaxis_title="test accuracy",
                      xaxis={"dtick": 1})
    return fig
