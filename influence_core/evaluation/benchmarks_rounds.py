"""The docs/benchmarks.md section of `evaluate rounds`: per setting (problem, noise kind), the
gap between the noisy and the clean-label model, its noise floor, and how much of the gap each
queue's retrained model closes after the last round, from docs/reports/rounds_*.json; the goal
(targets.json "rounds") is judged only where the gap is real."""

from __future__ import annotations

from ..audit.rounds import QUEUE_RANKING
from .benchmarks_doc import CLI, TARGETS, Reports, cmd, met, num, table
from .benchmarks_round_goal import goal_demand
from .round_goal import flips_and_decisions
from .round_rankings import QUEUE_TEXT

QUEUES = ("app", "cleanlab", "random", "perfect")


def _names(r: Reports, dev: bool = False) -> list[str]:
    """The rounds reports in the folder (not their figure files) of the test problems, or of
    the development problems (which choose the later rounds' ranking) with `dev`."""
    from .round_rankings import DEV_PROBLEMS

    names = sorted(p.name for p in r.folder.glob("rounds_*.json")
                   if not p.name.endswith(".plotly.json"))
    return [n for n in names if ((r(n)["setting"]["dataset"], r(n)["setting"]["model"])
                                 in DEV_PROBLEMS) == dev]


def _gap(x: dict | None, key: str = "gap_closed_retrained") -> str:
    return "n/a" if x is None or x.get(key) is None else num(x[key], 3)


def _flips(x: dict) -> tuple[float, float]:
    """A report's flips (mean over seeds), and how many of them exceed the budget's decisions
    (what a perfect queue leaves)."""
    flips, decisions = flips_and_decisions(x)
    return flips, max(0.0, flips - decisions)


def _row(r: Reports, name: str, goal: dict) -> tuple[list[str], bool | None]:
    x = r(name)
    s, d = x["setting"], x["derived"]
    final = d["final"]
    judged = d["gap"] >= goal["judged_gap_min"]
    ok = None
    if judged and "app_minus_cleanlab" in d:
        ok = (final["app"]["gap_closed_retrained"] >= goal["goal_gap_closed_min"]
              and d["app_minus_cleanlab"] >= 0)
    verdict = "not judged (gap below the bar)" if not judged else (
        "n/a" if ok is None else met(ok))
    seeds = ",".join(str(v) for v in s["seeds"])
    flips, perfect = _flips(x)
    row = ([f"{s['dataset']}/{s['model']}, {num(s['noise'], 1)} {s['noise_kind']}", seeds,
            num(d["gap"], 4), num(d["noise_floor"], 4)]
           + [_gap(final.get(q)) for q in QUEUES]
           + [_gap(final.get("app"), "gap_closed_retrained_worst_seed"),
              _gap(final.get("app"), "gap_closed_newton"),
              num(flips, 0), num(perfect, 0),
              " / ".join(num(final[q]["flips_left"], 0) if q in final else "n/a"
                         for q in QUEUES), verdict, r.link(name)])
    return row, ok


def _head(r: Reports, names: list[str], goal: dict) -> str:
    x = r(names[0])["setting"]
    return ("A simulated annotator who knows the true labels follows a queue for "
            f"{num(x['rounds'])} rounds of {num(x['budget'], 2)} × N decisions (relabel a flipped "
            "example to its true label, keep the rest); after each round the recipe is retrained "
            "on the reviewed labels. Queues, in the same run: **app** = what Review shows (round "
            f"1: the default ranking; later rounds: {_later(r, names)}), "
            "**cleanlab** = cleanlab's ranking of five-fold "
            "out-of-sample probabilities on the round's labels, **random**, **perfect** = every "
            "decision on a flipped example while any is left (the most any queue can repair "
            "within the budget; n/a in a report run before it existed). Gap = clean-label "
            "minus noisy test accuracy (mean over seeds); noise floor = the accuracy difference "
            "of two clean trainings with different seeds; gap closed = (accuracy − noisy) / "
            "(clean − noisy) after the last round's retrain, per seed, then averaged. Goal "
            f"(targets.json): at least {num(goal['goal_gap_closed_min'], 1)} of the gap closed "
            "and at least as much as cleanlab, judged where the gap is at least "
            f"{num(goal['judged_gap_min'], 2)}. Seeds are the suspect evaluation's test-split "
            "seeds; the later rounds' ranking was chosen on the development split below.")


def rounds(r: Reports) -> str:
    names = _names(r)
    goal = r(TARGETS)["rounds"]
    if not names:
        return "No cleaning-rounds report yet."
    results = [_row(r, n, goal) for n in names]
    head = _head(r, names, goal)
    body = table(["setting", "seeds", "gap", "noise floor", "gap closed: app", "cleanlab",
                  "random", "perfect", "app, worst seed", "app, Newton step only", "flips",
                  "flips a perfect queue leaves", "flips left: app / cleanlab / random / perfect",
                  "goal", "report"],
                 [row for row, _ in results])
    judged = [ok for _, ok in results if ok is not None]
    worse = [f"{x['setting']['dataset']} {num(x['setting']['noise'], 1)} "
             f"{x['setting']['noise_kind']}" for x in map(r, names)
             if (x["derived"]["final"].get("app", {}).get("gap_closed_newton") or 0) < 0]
    prose = ((f"Goal met in {num(sum(judged))} of {num(len(judged))} judged settings. "
              if judged else "No setting run so far has a gap at the bar: the goal is not "
              "judged yet. ")
             + "A perfect queue leaves only the flips beyond the budget; where it leaves none, "
             "its last retrain trains the recipe, with the same seed, on the clean labels, "
             "which is the clean-label model itself: it closes the whole gap. "
             + _beyond_budget(r, names, goal)
             + "What speaks against it: a gap of a point or two of test accuracy is a hundred "
             "or two test images, and a retrain moves test accuracy by itself (the random "
             "queue, which repairs few flips, shows how much), so one seed's gap closed can "
             "exceed one or swing by tenths; the flips left are the steadier measure of a "
             "queue. The table's columns are means over the seeds listed. "
             + (f"The Newton step alone, with the default damping (these noisy models have no "
                f"calibration), lowered test accuracy below the noisy model's after thousands "
                f"of relabels ({', '.join(worse)}): between rounds it is the retrain that "
                "repairs the model. " if worse else "")
             + _app_signals(r, names)
             + "Command per setting: "
             + cmd(f"{CLI} evaluate rounds --dataset D --model cnn --noise R --noise-kind K "
                   "--budget 0.05 --rounds 2 --seeds S --data-root <data>") + ".")
    demand = goal_demand(r, names, goal["judged_gap_min"])
    return "\n\n".join(p for p in [head, body, prose, _per_seed(r, names, goal), demand,
                                    round_rankings(r), pruning(r)] if p)


def _per_seed(r: Reports, names: list[str], goal: dict) -> str:
    """The judged settings seed by seed: the app's and cleanlab's last retrain, in gap closed
    and in flips left, and on how many seeds the app's queue did at least as well."""
    rows = []
    for n in names:
        x = r(n)
        s = x["setting"]
        if x["derived"]["gap"] < goal["judged_gap_min"] or not {"app", "cleanlab"} <= set(
                x["derived"]["final"]):
            continue
        last = [(v["queues"]["app"][-1], v["queues"]["cleanlab"][-1]) for v in x["seeds"]]
        closed = sum(a["gap_closed_retrained"] >= c["gap_closed_retrained"] for a, c in last)
        fewer = sum(a["flips_left"] <= c["flips_left"] for a, c in last)
        rows.append([f"{s['dataset']}/{s['model']}, {num(s['noise'], 1)} {s['noise_kind']}",
                     ", ".join(str(v["seed"]) for v in x["seeds"]),
                     "; ".join(f"{num(a['gap_closed_retrained'], 3)} / "
                               f"{num(c['gap_closed_retrained'], 3)}" for a, c in last),
                     "; ".join(f"{num(a['flips_left'], 0)} / {num(c['flips_left'], 0)}"
                               for a, c in last),
                     f"{num(closed)} of {num(len(last))}", f"{num(fewer)} of {num(len(last))}"])
    if not rows:
        return ""
    return ("Seed by seed, judged settings (each seed's own noisy and clean-label models; the "
            "goal above is judged on their means):\n\n"
            + table(["setting", "seeds", "gap closed: app / cleanlab",
                     "flips left: app / cleanlab", "seeds where the app closed at least as much",
                     "seeds where the app left no more flips"], rows))


def _later(r: Reports, names: list[str]) -> str:
    """What ordered the app queue's later rounds in these reports (older reports: the
    checkpoint loss alone)."""
    from .round_rankings import EARLIER_QUEUE_RANKING

    used = {n: r(n)["setting"].get("queue_ranking", EARLIER_QUEUE_RANKING) for n in names}
    if len(set(used.values())) == 1:
        return QUEUE_TEXT[next(iter(used.values()))]
    return "; ".join(f"{r(n)['setting']['dataset']} {num(r(n)['setting']['noise'], 1)} "
                     f"{r(n)['setting']['noise_kind']}: {QUEUE_TEXT[k]}" for n, k in used.items())


def _beyond_budget(r: Reports, names: list[str], goal: dict) -> str:
    """What the perfect queue closed where the budget cannot cover the flips."""
    parts = []
    for n in names:
        x = r(n)
        s, perfect = x["setting"], x["derived"]["final"].get("perfect")
        if perfect and _flips(x)[1] > 0:
            parts.append(f"{s['dataset']} {num(s['noise'], 1)} {s['noise_kind']}: "
                         f"{_gap(perfect)} with {num(perfect['flips_left'], 0)} flips left")
    if not parts:
        return ""
    return ("Where the budget is smaller than the number of flips, the perfect queue closed ("
            + "; ".join(parts) + "), below the goal's "
            f"{num(goal['goal_gap_closed_min'], 1)}: there the goal asks more than spending every "
            "decision on a flip achieved. ")


def _app_signals(r: Reports, names: list[str]) -> str:
    """Which ranking ordered the app queue's round 1 in each report (the default's signal for
    that noisy model; reports without it were written before the default was the fit gate)."""
    from .cleaning_rounds import EARLIER_APP_SIGNAL

    used = {n: r(n)["derived"].get("app_signals") or [EARLIER_APP_SIGNAL] for n in names}
    if len({tuple(v) for v in used.values()}) == 1:
        return (f"The app queue's round 1 was ranked by `{', '.join(next(iter(used.values())))}` "
                "in every report. ")
    return ("The app queue's round 1 was ranked by: " + "; ".join(
        f"{r(n)['setting']['dataset']} {num(r(n)['setting']['noise'], 1)} "
        f"{r(n)['setting']['noise_kind']} `{', '.join(v)}`" for n, v in used.items()) + ". ")


def summary_row(r: Reports) -> tuple[str, str, str] | None:
    """(what, measured, note) for the README: the setting with the largest gap, and the goal
    count over the judged settings; None without a report."""
    names = _names(r)
    if not names:
        return None
    goal = r(TARGETS)["rounds"]
    oks = [ok for _, ok in (_row(r, n, goal) for n in names) if ok is not None]
    name = max(names, key=lambda n: r(n)["derived"]["gap"])
    x = r(name)
    s, d = x["setting"], x["derived"]
    final = d["final"]
    what = (f"cleaning rounds: {num(s['rounds'])} rounds of {num(s['budget'], 2)} × N "
            "decisions, then a retrain")
    measured = (f"{s['dataset']}/{s['model']} {s['noise_kind']} noise (gap {num(d['gap'], 4)}): "
                f"the app's queue closes {_gap(final.get('app'))} of the gap, cleanlab's "
                f"{_gap(final.get('cleanlab'))}, random {_gap(final.get('random'))}")
    note = (f"goal ≥ {num(goal['goal_gap_closed_min'], 1)} and ≥ cleanlab: met in "
            f"{num(len([o for o in oks if o]))} of {num(len(oks))} settings with a gap ≥ "
            f"{num(goal['judged_gap_min'], 2)}" if oks else
            f"goal ≥ {num(goal['goal_gap_closed_min'], 1)} and ≥ cleanlab: not judged yet "
            f"(no setting run has a gap ≥ {num(goal['judged_gap_min'], 2)})")
    return what, measured, note


def round_rankings(r: Reports) -> str:
    """The later rounds' ranking: each candidate's fraction of a round's decisions that land on
    a flip, per development setting (where it is chosen) and per test setting (reported)."""
    from .round_rankings import DEV_SEEDS, choose, ranking_table

    dev = ranking_table([r(n) for n in _names(r, dev=True)])
    test = ranking_table([r(n) for n in _names(r)])
    if not dev:
        return "### Later rounds' ranking\n\nNo development-split rounds report yet."
    names = list(next(iter(dev.values())))
    parts = ["### Later rounds' ranking", (
        "After each retrain the app orders the next queue by one of these rankings (those "
        "with `cv2_loss` cost about one more training per round: two models on half the "
        "data each; the others need nothing beyond the retrain): "
        + "; ".join(f"`{k}` = {QUEUE_TEXT[k]}" for k in names) + ". The app queue's runs "
        "also count, at every round after the first, how many of the round's decisions each "
        "ranking would have put on a flipped example (same retrained model, same reviewed "
        "set). Cells: that count over the round's decisions, mean over seeds and rounds "
        "(each report's `derived.queue_candidates`). "
        f"Development split (digits/mlp, mnist/mlp, noise seeds "
        f"{', '.join(map(str, DEV_SEEDS))}): the choice is the ranking best in the most "
        "settings, then the highest mean.")]
    for title, rows in (("development split", dev), ("test split (reported, not chosen on)",
                                                     test)):
        if not rows:
            parts.append(f"No {title.split(' (')[0]} report with these counts yet.")
            continue
        body = [[k] + [num(v[n], 3) if n in v else "not counted" for n in names]
                for k, v in rows.items()]
        parts.append(f"{title[0].upper()}{title[1:]}:\n\n"
                     + table(["setting"] + [f"`{n}`" for n in names], body))
    choice = choose(dev)
    parts.append(f"Development choice: `{choice}`; the app uses `{QUEUE_RANKING}`."
                 + (" Command per setting: " + cmd(
                     f"{CLI} evaluate rounds --dataset D --model mlp --noise R --noise-kind K "
                     "--budget 0.05 --rounds 2 --seeds 0,1 --queues app --data-root <data>")
                    + "."))
    return "\n\n".join(parts)


def pruning(r: Reports) -> str:
    """The last retrain leaving out the next suspects (evaluation.round_pruning), per setting:
    gap closed by the plain retrain and by each pruned one, and how many left out were flips."""
    from .round_pruning import PRUNE_FRACTIONS

    keys = [f"{f:g}" for f in PRUNE_FRACTIONS]
    parts = ["### Leaving the next suspects out of the last retrain", (
        "After the app queue's last round the recipe is also trained on the same labels "
        "leaving out the top f × N of the retrained model's unreviewed queue (confident "
        "learning's prune-and-retrain; nothing is deleted, the examples stay in the next "
        "queue), one training per f. The app's retrain does not do this. Cells: gap closed "
        "(mean over the seeds listed: those run since this measurement exists; the plain "
        "retrain over the same seeds), in brackets the share of the left-out examples whose "
        "label is flipped.")]
    for title, dev in (("Development split", True), ("Test split (reported, not chosen on)",
                                                     False)):
        rows, found = [], {}
        for n in _names(r, dev=dev):
            x = r(n)
            s, p = x["setting"], x["derived"].get("pruned_retrains")
            if not p:
                continue
            name = f"{s['dataset']}/{s['model']} {num(s['noise'], 1)} {s['noise_kind']}"
            found[name] = p
            rows.append([name, ", ".join(str(v) for v in p["seeds"]), num(p["plain"], 3)]
                        + [f"{num(p[k], 3)} ({num(p[f'{k}_flips_left_out'], 2)})"
                           if k in p else "not run" for k in keys])
        parts.append(f"{title}: no report with this measurement yet." if not rows else
                     f"{title}:\n\n" + table(["setting", "seeds", "plain retrain"]
                                              + [f"f = {k}" for k in keys], rows))
        if dev and found:
            parts.append(_pruning_verdict(found, keys))
    return "\n\n".join(parts)


def _pruning_verdict(found: dict[str, dict], keys: list[str]) -> str:
    """Where leaving the next suspects out raised or lowered the gap closed on the development
    split, and whether any fraction raised it in every setting."""
    up = [n for n, p in found.items() if all(p.get(k, -1e9) > p["plain"] for k in keys)]
    down = [n for n, p in found.items() if all(p.get(k, 1e9) < p["plain"] for k in keys)]
    everywhere = [k for k in keys if all(k in p and p[k] > p["plain"] for p in found.values())]
    text = ("On the development split, leaving the next suspects out raised the gap closed at "
            f"every fraction in {', '.join(up) or 'no setting'}, and lowered it at every fraction "
            f"in {', '.join(down) or 'no setting'}. ")
    if everywhere:
        return text + (f"f = {everywhere[0]} raised it in every development setting: a candidate "
                       "for the app's retrain, to be reported on the test split first.")
    share = {n: p.get(f"{keys[0]}_flips_left_out", 0.0) for n, p in found.items()}
    apart = bool(up and down) and min(share[n] for n in up) > max(share[n] for n in down)
    return text + ("No fraction raised it in every setting, so the app's retrain leaves out only "
                   "the removed examples. " + (
                       f"At f = {keys[0]} the left-out examples were more often flipped in "
                       "every setting where it helped than in any where it hurt: a rule would "
                       "need an estimate of how many flips are left." if apart else ""))
