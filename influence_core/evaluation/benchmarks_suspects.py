"""The docs/benchmarks.md section of `evaluate suspects`: the suspect rankings and suggestion
rules on the development split (where the default is chosen) and the test split (where it is
reported), from docs/reports/suspects_dev.json and suspects_test.json when they exist."""

from __future__ import annotations

from ..audit.suggest import APP_RULE
from .benchmarks_doc import CLI, DATA, TARGETS, Reports, cmd, num, table

SHOWN = ["cv2_loss+checkpoint_loss+dynamics_loss", "cv_loss+checkpoint_loss", "cleanlab", "loss",
         "self_influence", "aum", "dynamics_loss", "forgetting", "checkpoint_loss", "cv_loss",
         "kronfluence_self_influence", "cv2_loss"]


def _spread(v: dict) -> str:
    """The value, with its std over seeds where there are several."""
    return num(v["value"], 3) + (f" ± {num(v['std'], 3)}" if v.get("seeds", 1) > 1 else "")


def _per_seed(v: dict) -> str:
    margins = v.get("seed_margins", {})
    return ", ".join(f"{m:+.3f}" for m in margins.values()) if len(margins) > 1 else ""


def _shortfalls(g: dict, overall: dict[str, float], key: str = "per_setting",
                unit: str = "settings") -> list[str]:
    """Where `g`'s ranking or rule falls below the best baseline (per setting, or per group
    with key="per_group" of a by-kind summary): the best of our candidates there, and whether
    it reaches that baseline."""
    short = {s: v for s, v in g[key].items() if v["margin"] < 0 and "best_candidate" in v}
    if not short:
        return []
    reached = [v for v in short.values() if v["best_candidate_mean"] >= v["best_baseline_mean"]]
    text = "Where it falls short, the best of our candidates there: " + "; ".join(
        f"{s}: `{v['best_candidate']}` {num(v['best_candidate_mean'], 3)} against "
        f"{v['best_baseline']} {num(v['best_baseline_mean'], 3)}" for s, v in short.items())
    text += (f". A candidate reaches the best baseline in {num(len(reached))} of these "
             f"{num(len(short))} {unit}" if len(short) > 1 else
             ". That candidate reaches the best baseline there" if reached else
             ". No candidate reaches the best baseline there")
    reach = sorted({v["best_candidate"] for v in reached})
    if reach and all(overall.get(n, 1.0) < overall[g["name"]] for n in reach):
        text += (f"; each such candidate is below `{g['name']}` on the mean over settings ("
                 + ", ".join(f"`{n}` {num(overall[n], 3)}" for n in reach)
                 + f" against {num(overall[g['name']], 3)})")
    return [text + "."]


def _margins(g: dict, what: str, baselines: str, overall: dict[str, float]) -> list[str]:
    reach = any("most_possible" in v for v in g["per_setting"].values())
    seeds = any("seeds" in v for v in g["per_setting"].values())
    rows = [[s, _spread(v)] + ([str(v["seeds"]) if "seeds" in v else ""] if seeds else [])
            + [f"{v['best_baseline']} {num(v['best_baseline_mean'], 3)}", f"{v['margin']:+.3f}"]
            + ([_per_seed(v)] if seeds else [])
            + ([num(v["most_possible"], 3) if "most_possible" in v else ""] if reach else [])
            for s, v in g["per_setting"].items()]
    head = (["setting (noise kind, rate, regime)", "it"] + (["seeds"] if seeds else [])
            + ["best baseline", "margin"] + (["margin per seed"] if seeds else [])
            + (["most possible"] if reach else []))
    lines = [f"{what} `{g['name']}` at least as good as the best of {baselines} in "
             f"{num(g['met'])} of {num(g['of'])} settings:", table(head, rows)]
    if seeds:
        lines.append("It: the mean over the setting's seeds, ± their standard deviation where "
                     "there are several. Margin: that mean minus the best baseline's mean; "
                     "margin per seed: the same on each seed alone, against the same baseline, "
                     "seeds in increasing order.")
    if reach:
        lines.append("Most possible: the fraction of the flips that inspecting 10% of the "
                     "training set can reach at best (below one where the flips outnumber the "
                     "images inspected), mean over seeds.")
    lines += _shortfalls(g, overall)
    if g.get("by_kind", {}).get("of"):
        k = g["by_kind"]
        lines += [f"By noise kind and regime, comparing means over the settings of each (both "
                  f"datasets, both noise rates): at least as good in {num(k['met'])} of "
                  f"{num(k['of'])}:",
                  table(["noise kind, regime", "it", "settings", "best baseline", "margin",
                         "best of ours"],
                        [[s, num(v["value"], 3), num(v["settings"]),
                          f"{v['best_baseline']} {num(v['best_baseline_mean'], 3)}",
                          f"{v['margin']:+.3f}",
                          f"`{v['best_candidate']}` {num(v['best_candidate_mean'], 3)}"]
                         for s, v in k["per_group"].items()])]
        lines += _shortfalls({"name": g["name"], **k}, overall, "per_group", "groups")
        lines.append("This grouping entered the report after the per-setting results had been "
                     "seen; nothing is chosen by it (no ranking, rule or constant depends on "
                     "it). Best of ours: the best of every candidate and rule measured there "
                     "(the baselines cleanlab and, for rankings, Kronfluence self-influence left "
                     "out).")
    return lines


def _choices(x: dict, sug: dict[str, float]) -> list[str]:
    """The development split's choices: what was chosen, by which criterion, and what the
    mean alone would have chosen where that differs."""
    parts: list[str] = []
    met, rmet = x.get("settings_met", {}), x.get("suggestion_settings_met", {})
    n = num(len(x["settings"]))
    parts.append(f"Best candidate on this split: `{x['chosen']}`; best within "
                 f"{x['max_default_trainings']:g} extra training (the default's "
                 f"budget): `{x['chosen_default']}`; best suggestion rule that ranking "
                 f"has at hand: `{x['chosen_rule']}`. Best means: at least as good as "
                 "the best baseline in the most settings (the goal is per setting), then "
                 "the highest mean"
                 + (f": the ranking in {num(met[x['chosen_default']])} of {n} settings "
                    f"here, the suggestion rule in {num(rmet[x['chosen_rule']])} of {n}"
                    if x["chosen_default"] in met and x["chosen_rule"] in rmet else "")
                 + ".")
    top = max(sug, key=sug.get) if sug else None
    if top and top != x["chosen_rule"] and x["chosen_rule"] in sug:
        parts.append(f"By the mean alone the suggestion rule would be `{top}` "
                     f"({num(sug[top], 3)} against {num(sug[x['chosen_rule']], 3)}). The "
                     "per-setting criterion replaced the mean alone after the test split's "
                     "suggestion results had been seen (there the mean's pick fell below "
                     "the model's own class in most regular-regime settings), so only the "
                     "test runs made after it are an untouched check of that choice.")
    if x.get("chosen_rule") and x["chosen_rule"] != APP_RULE and APP_RULE in sug:
        parts.append(f"The app's suggestion rule is `{APP_RULE}` (right for "
                     f"{num(sug[APP_RULE], 3)} of the flips here), not this split's "
                     f"choice (`{x['chosen_rule']}`, {num(sug[x['chosen_rule']], 3)}).")
    return parts


def _split(r: Reports, name: str) -> str:
    x = r(name)
    means, cost = x["overall"], x.get("extra_trainings", {})
    keep = {x["default"], x.get("chosen"), x.get("chosen_default"), *SHOWN}
    rows = [[f"`{n}`" + (" (default)" if n == x["default"] else ""), num(means[n], 3),
             f"{cost[n]:g}" if n in cost else "baseline"]
            for n in sorted(means, key=lambda n: -means[n]) if n in keep]
    sug = x["suggestion_overall"]
    rules = [[f"`{k}`", num(v, 3)] for k, v in sorted(sug.items(), key=lambda kv: -kv[1])]
    command = cmd(f"{CLI} evaluate suspects --split {x['split']}")
    head = (f"**{x['split']} split** ({r.link(name)}): {num(x['n_runs'])} of "
            f"{num(x['planned_runs'])} planned runs, {command}. "
            "Fraction of flips found at 10% inspected, mean over settings of the mean over "
            "each setting's seeds:")
    parts = [head, table(["ranking", "found", "extra trainings"], rows)]
    if x.get("chosen"):
        parts += _choices(x, sug)
    if "fit_gate" in x:
        parts.append(_gate(x))
    if "goal" in x:
        parts += _margins(x["goal"], "Default", "cleanlab, training loss and Kronfluence "
                          "self-influence", means)
    if "suggestion_goal" in x:
        parts += _margins(x["suggestion_goal"], "Suggestion rule", "the model's best other "
                          "class and cleanlab's argmax", sug)
    parts += ["Suggested label right on the flipped examples, per rule (mean over settings):",
              table(["rule", "right"], rules)]
    return "\n\n".join(parts)


def _gate(x: dict) -> str:
    """One paragraph: what the fit gate picked on this split's runs (and, on dev, its gap)."""
    gate, runs = x["fit_gate"], x["fit_gate"]["runs"].values()
    picks = {}
    for run in runs:
        picks.setdefault(run["signal"], []).append(run["gap"])
    said = "; ".join(f"`{s}` in {num(gate['picked'][s])} (gaps {g_min:+.3f} to {g_max:+.3f})"
                     for s, g in sorted(picks.items())
                     for g_min, g_max in [(min(g), max(g))])
    chosen = (f" The threshold chosen on these runs: {gate['chosen_gap']:+.4f} (the midpoint "
              f"whose gate finds the most flips here; the code uses {num(gate['code_gap'], 3)})."
              if gate.get("chosen_gap") is not None else
              f" Threshold {num(gate['code_gap'], 3)}, chosen on the development split.")
    if gate.get("chosen_gap") is None:
        if len(picks) == 1:
            said += (": every run so far is one branch's, so this split measures the gate's "
                     "other branch in none of them")
        said += (". What speaks against it: the gate entered the candidates after the test "
                 "split's regular 10% runs had shown the training loss ahead of the previous "
                 "default; its branches and threshold come from the development split alone, "
                 "but only the test runs made after it (memorising, and the higher noise rate) "
                 "are an untouched check of it")
    return ("The default ranking `fit_gate` is the training loss when the model's accuracy on "
            "its given training labels exceeds its test accuracy by at most a threshold (it "
            "has not memorised its label errors), else `cv2_loss+checkpoint_loss+"
            "dynamics_loss`." + chosen + f" Over this split's {num(len(runs))} runs it "
            f"picked {said}.")


def suspects(r: Reports) -> str:
    present = [n for n in ("suspects_dev.json", "suspects_test.json")
               if (r.folder / n).is_file()]
    intro = ("Candidates are chosen on the development split (digits/mlp, and mnist/mlp on a "
             "seeded subset) and reported on the test split (mnist/cnn and fashion_mnist/cnn "
             "on seeded subsets, other noise seeds), for each noise kind (uniform, pair, "
             "instance), rate and regime asked for; the reports list their runs.")
    if "suspects_test.json" not in present:
        intro += " The test split has not been run yet: no held-out number exists."
    return "\n\n".join([intro] + [_split(r, n) for n in present])


def first_card(r: Reports) -> str:
    core, web = r("first_card_mnist_cnn.json"), r("first_card_mnist_browser.json")
    goal = r(TARGETS)["first_card"]["goal_seconds_max"]
    rows = [[k, num(v, 1)] for k, v in core["stages_s"].items()]
    steps = [[f"`{k}`", num(v, 1)] for k, v in core["steps_s"].items()]
    bench = cmd(CLI + " bench first-card --dataset mnist --model cnn " + DATA)
    return "\n\n".join([
        (f"From choosing {core['dataset']}/{core['model']} with nothing cached to the first "
         f"Review card (default ranking `{core['signal']}`), goal {num(goal)} s on this "
         f"machine. The card is drawn as soon as the ranking is computed, with its decision "
         f"buttons greyed out; they open when the attribution index (the card's evidence and "
         f"the Newton step's curvature) is built. The app's setup, run stage by stage in a "
         f"fresh artifacts folder ({bench}, {r.link('first_card_mnist_cnn.json')}): the card on "
         f"screen after "
         f"**{num(core['card_s'], 0)} s**, its decisions open after "
         f"**{num(core['total_s'], 0)} s**."),
        table(["stage", "seconds"], rows),
        "Where the time went (each step from its first to its last progress report):",
        table(["step", "seconds"], steps),
        *([(f"Opening the app again (the same setup in a new process over the folder the first "
            f"run filled, same report): **{num(core['reopen_total_s'], 0)} s** ("
            + ", ".join(f"{k} {num(v, 1)} s" for k, v in core["reopen_stages_s"].items())
            + ").")] if "reopen_total_s" in core else []),
        (f"In the browser (chromium on the same machine, its page polled by the test; "
         f"{cmd('pytest -m slow tests/test_browser_mnist.py -k first_card -s')}, "
         f"{r.link('first_card_mnist_browser.json')}): the card on screen after "
         f"**{num(web['seconds'], 0)} s** from opening Review, its decisions open after "
         f"**{num(web['decisions_seconds'], 0)} s** (suspect "
         f"{'the same' if web['same_suspect'] else '**a different one**'}); the progress "
         "bar's texts on the way: " + "; ".join(f"`{t}`" for t in web["progress_texts"]) + "."),
    ])
