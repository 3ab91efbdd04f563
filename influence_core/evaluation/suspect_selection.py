"""Choosing the default suspect ranking honestly: candidates are scored on a development split
and the choice is reported on a test split never used for choosing.

  dev   digits/mlp (all 1437 images) and mnist/mlp (a seeded 20% subset), noise seeds 0-1
  test  mnist/cnn and fashion_mnist/cnn (seeded 20% subsets, 12k images), noise seeds 2-4
Each split crosses the noise kinds (uniform, pair, instance; data/noise.py), noise rates and
regimes (regular, memorising) asked for. One run is evaluation.mislabel.run_mislabel; its
result is kept beside the report (<report folder>/suspect-runs/<run>.json, committed with the
shipped reports), so an interrupted command resumes and a summary can be checked run by run.
A kept run that lacks one of today's candidates is run again. The summary
gives, per ranking, the fraction of flips found at 10% inspected: mean and spread over seeds
per setting, and the mean over the settings of the split; on dev (never on test), `chosen` is the
best candidate (at least as good as the best baseline in the most settings, then the highest
mean) and `chosen_default` the best one costing at most MAX_DEFAULT_TRAININGS extra
trainings (the app's default: its cost counts in the time to the first Review card); on test,
the report compares the default with cleanlab, training loss and Kronfluence self-influence,
measured in the same runs.
"""

from __future__ import annotations

import json
from itertools import pairwise, product
from pathlib import Path

import numpy as np

from ..audit.signals import (
    FIT_GAP,
    FIT_GATE,
    FITTING_SIGNAL,
    MEMORISING_SIGNAL,
    extra_trainings,
    probability_sources,
)
from ..audit.suggest import FITTING_RULE, MEMORISING_RULE, sources_of
from ..progress import Progress, silent
from .mislabel import BASE, COMBINATIONS, mislabel_config, run_gap, run_mislabel, with_fit_gate
from .reports import write_report
from .suspect_goals import by_kind, margins, settings_met

SPLITS = {
    "dev": {"problems": [("digits", "mlp", 1.0), ("mnist", "mlp", 0.2)], "seeds": (0, 1)},
    "test": {"problems": [("mnist", "cnn", 0.2), ("fashion_mnist", "cnn", 0.2)],
             "seeds": (2, 3, 4)},
}
BASELINES = ("cleanlab", "loss", "kronfluence_self_influence")
SUGGESTION_BASELINES = ("model", "cleanlab")  # the model's best other class, cleanlab's argmax
NOT_CANDIDATES = {"cleanlab", "kronfluence_self_influence"}  # baselines, not our rankings
BUDGET = "0.10"
#: The default ranking may cost at most this many extra trainings (audit.suspects.
#: extra_trainings): on mnist/cnn (2 cores) one training is ~50 s, the model's own training and
#: the index take ~100 s, and the first Review card must be on screen within 3 minutes.
MAX_DEFAULT_TRAININGS = 1.0


def run_key(dataset: str, model: str, subset: float, kind: str, rate: float, regime: str,
            seed: int) -> str:
    return f"{dataset}_{model}_sub{subset:g}_{kind}_{rate:g}_{regime}_s{seed}"


def settings(split: str, kinds: list[str], rates: list[float], regimes: list[str]) -> list:
    """The split's runs, seed by seed (a partial run covers every setting once first)."""
    s = SPLITS[split]
    return [(d, m, sub, k, r, g, seed) for seed, (d, m, sub), g, r, k
            in product(s["seeds"], s["problems"], regimes, rates, kinds)]


def _complete(path: Path) -> bool:
    """A kept run that has every candidate ranking of today's code."""
    if not path.is_file():
        return False
    have = set(json.loads(path.read_text())["rankings"])
    return set(BASE) | set(COMBINATIONS) <= have


def run_all(split: str, kinds: list[str], rates: list[float], regimes: list[str],
            folder: Path, data_root: str | None = None, kronfluence: bool = True,
            epochs: int | None = None, progress: Progress = silent,
            available_only: bool = False) -> dict[str, dict]:
    """Every run of the split, each kept in `folder` as <run key>.json; key -> run_mislabel's
    result without its curves. `available_only`: run nothing, return the runs already kept
    (a partial summary)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for d, m, sub, kind, rate, regime, seed in settings(split, kinds, rates, regimes):
        key = run_key(d, m, sub, kind, rate, regime, seed)
        path = folder / f"{key}.json"
        done = _complete(path)
        if not done and available_only:
            continue
        if not done:
            cfg = mislabel_config(d, m, rate, regime, sub, epochs, kind, seed)
            res = run_mislabel(cfg, data_root, kronfluence, progress=progress)
            res.pop("_curves", None)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(res, indent=1))
            tmp.replace(path)
        out[key] = json.loads(path.read_text())
    return out


def _setting(key: str) -> str:
    return key.rsplit("_s", 1)[0]


# long: one pass over the runs, then each split's own part (dev: the choices; test: margins)
def summarise(split: str, runs: dict[str, dict], default: str, planned: int = 0,
              rule: str = "") -> dict:
    """Per setting and ranking: mean / std / n of the fraction found at BUDGET; overall means;
    the suggestion rules' accuracy the same way. On dev: the chosen candidates, and the best
    suggestion rule among those the chosen default's session has at hand (`chosen_rule`), best
    meaning at least as good as the best baseline in the most settings, then the highest mean;
    on test: the default's and the suggestion `rule`'s margins over their baselines."""
    runs = {k: with_fit_gate({**r, "rankings": dict(r["rankings"]),  # the caller's stay as given
                              "suggestion": dict(r.get("suggestion", {}))})
            for k, r in runs.items()}
    reach: dict[str, list[float]] = {}  # the most a ranking can find at BUDGET, per run
    # setting -> name -> seed -> fraction found at BUDGET, and suggestion accuracy
    seeded: dict[str, dict[str, dict[str, dict[int, float]]]] = {"found": {}, "suggest": {}}
    for key, res in runs.items():
        seed = int(key.rsplit("_s", 1)[1])
        if res.get("n_flipped"):
            reach.setdefault(_setting(key), []).append(
                min(1.0, float(BUDGET) * res["n_train"] / res["n_flipped"]))
        for name, r in res["rankings"].items():
            seeded["found"].setdefault(_setting(key), {}).setdefault(name, {})[seed] = (
                r["curve"][BUDGET])
        for name, r in res.get("suggestion", {}).items():
            seeded["suggest"].setdefault(_setting(key), {}).setdefault(name, {})[seed] = (
                r["accuracy"])
    found, suggest = ({s: {n: list(v.values()) for n, v in per.items()} for s, per in
                       seeded[k].items()} for k in ("found", "suggest"))

    def table(values: dict) -> dict:
        return {s: {n: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}
                    for n, v in per.items()} for s, per in values.items()}

    def overall(values: dict, common: bool = True) -> dict:
        """Per name, the mean over settings of its mean over seeds: over the settings that
        have every name (`common`), else over those that have it."""
        sets = [set(per) for per in values.values()]
        names = (set.intersection(*sets) if common else set.union(*sets)) if sets else set()
        return {n: float(np.mean([np.mean(per[n]) for per in values.values() if n in per]))
                for n in sorted(names)}

    means = overall(found)
    out = {"split": split, "budget": float(BUDGET), "runs": sorted(runs), "default": default,
           "n_runs": len(runs), "planned_runs": max(planned, len(runs)),
           "noise_rates": sorted({float(k.rsplit("_", 3)[1]) for k in runs}),
           "settings": table(found), "overall": means, "suggestion": table(suggest),
           "suggestion_overall": overall(suggest, common=False)}
    out["extra_trainings"] = {n: extra_trainings(n) for n in means if n not in NOT_CANDIDATES}
    if split == "dev":
        # the goal is per setting: most settings at least as good as the best baseline first,
        # then the mean over settings
        met = settings_met(out["settings"], BASELINES)
        candidates = {n: (met[n], v) for n, v in means.items() if n not in NOT_CANDIDATES}
        out["chosen"] = max(candidates, key=candidates.get) if candidates else None
        cheap = {n: v for n, v in candidates.items()
                 if extra_trainings(n) <= MAX_DEFAULT_TRAININGS}
        out["chosen_default"] = max(cheap, key=cheap.get) if cheap else None
        out["settings_met"] = met
        out["max_default_trainings"] = MAX_DEFAULT_TRAININGS
        have = probability_sources(out["chosen_default"] or "")
        everywhere = overall(suggest)  # rules measured in every setting
        reads = {r: sources_of(r) or _gate_sources(r) for r in everywhere}
        rule_met = settings_met(out["suggestion"], SUGGESTION_BASELINES)
        rules = {r: (rule_met[r], v) for r, v in everywhere.items()
                 if reads[r] and set(reads[r]) <= have}
        out["chosen_rule"] = max(rules, key=rules.get) if rules else None
        out["suggestion_settings_met"] = {r: rule_met[r] for r in everywhere}
        out["fit_gate"] = {"code_gap": FIT_GAP, **choose_gap(runs)}
    else:
        out["fit_gate"] = {"code_gap": FIT_GAP}
        ceiling = {s: float(np.mean(v)) for s, v in reach.items()}
        out["goal"] = margins(out["settings"], default, BASELINES, ceiling, seeded["found"],
                              NOT_CANDIDATES)
        out["goal"]["by_kind"] = by_kind(out["settings"], default, BASELINES,
                                         NOT_CANDIDATES)
        if rule:
            out["rule"] = rule
            out["suggestion_goal"] = margins(out["suggestion"], rule, SUGGESTION_BASELINES,
                                             seeds=seeded["suggest"],
                                             not_ours=("cleanlab",))
            out["suggestion_goal"]["by_kind"] = by_kind(out["suggestion"], rule,
                                                        SUGGESTION_BASELINES,
                                                        ("cleanlab",))
    gated = {k: r["fit_gate"] for k, r in sorted(runs.items()) if "fit_gate" in r}
    out["fit_gate"]["runs"] = gated
    out["fit_gate"]["picked"] = {s: sum(g["signal"] == s for g in gated.values())
                                 for s in sorted({g["signal"] for g in gated.values()})}
    return out


def _gate_sources(rule: str) -> list[str]:
    """The probability sources the fit gate's suggestion rule reads (both its branches)."""
    return sources_of(FITTING_RULE) + sources_of(MEMORISING_RULE) if rule == FIT_GATE else []


def choose_gap(runs: dict[str, dict]) -> dict:
    """The fit gate's threshold (audit.signals.FIT_GAP) chosen on these runs: of the midpoints
    between consecutive run gaps (and one below the least, one above the greatest), the one
    whose gate finds the most flips at BUDGET, as a mean over settings of the mean over seeds;
    the first such on a tie. Returns it and every midpoint's mean."""
    runs = {k: r for k, r in runs.items() if "fit_gate" in r}  # runs the gate applies to
    if not runs:
        return {"chosen_gap": None, "by_gap": []}
    gaps = sorted({run_gap(r) for r in runs.values()})
    points = [gaps[0] - 0.01, *[(a + b) / 2 for a, b in pairwise(gaps)], gaps[-1] + 0.01]

    def score(t: float) -> float:
        per: dict[str, list[float]] = {}
        for key, r in runs.items():
            pick = FITTING_SIGNAL if run_gap(r) <= t else MEMORISING_SIGNAL
            per.setdefault(_setting(key), []).append(r["rankings"][pick]["curve"][BUDGET])
        return float(np.mean([np.mean(v) for v in per.values()]))

    scores = [(round(t, 4), score(t)) for t in points]
    best = max(scores, key=lambda ts: ts[1])  # max keeps the first of equal scores
    return {"chosen_gap": best[0], "by_gap": scores}


def selection_markdown(summary: dict) -> str:
    names = sorted(summary["overall"], key=lambda n: -summary["overall"][n])
    lines = [f"Suspect rankings, {summary['split']} split: fraction of flips found with "
             f"{summary['budget']:.0%} of the training set inspected, mean over "
             f"{len(summary['settings'])} settings of the mean over each one's seeds "
             f"({summary['n_runs']} of {summary['planned_runs']} planned runs). "
             f"Default ranking: `{summary['default']}`"
             + (f"; best candidate here: `{summary['chosen']}`, best within "
                f"{summary['max_default_trainings']:g} extra training: "
                f"`{summary['chosen_default']}`; best suggestion rule it has at hand: "
                f"`{summary['chosen_rule']}`." if "chosen" in summary else "."), "",
             "| ranking | mean | extra trainings |", "|---|---|---|"]
    cost = summary["extra_trainings"]
    lines += [f"| {n} | {summary['overall'][n]:.3f} | "
              f"{cost[n]:g} |" if n in cost else f"| {n} | {summary['overall'][n]:.3f} | |"
              for n in names]
    for key, what, base in (("goal", "Default", BASELINES),
                            ("suggestion_goal", "Suggestion rule", SUGGESTION_BASELINES)):
        if key in summary:
            g = summary[key]
            reach = ((" most possible |", "---|")
                     if any("most_possible" in v for v in g["per_setting"].values()) else ("", ""))
            lines += ["", f"{what} `{g['name']}` >= best of {', '.join(base)}: {g['met']} of "
                      f"{g['of']} settings.", "",
                      "| setting | it (std) | seeds | best baseline | margin | per seed |"
                      + reach[0], "|---|---|---|---|---|---|" + reach[1]]
            lines += [f"| {s} | {v['value']:.3f} ({v.get('std', 0):.3f}) | {v.get('seeds', '')} "
                      f"| {v['best_baseline']} {v['best_baseline_mean']:.3f} | "
                      f"{v['margin']:+.3f} | "
                      + ", ".join(f"{m:+.3f}" for m in v.get("seed_margins", {}).values()) + " |"
                      + (f" {v['most_possible']:.3f} |" if "most_possible" in v else
                         " |" if reach[0] else "")
                      for s, v in g["per_setting"].items()]
            if "by_kind" in g:
                k = g["by_kind"]
                lines += ["", f"By noise kind and regime (means over its settings): {k['met']} "
                          f"of {k['of']}.", "", "| kind, regime | it | settings | best "
                          "baseline | margin | best candidate |", "|---|---|---|---|---|---|"]
                lines += [f"| {s} | {v['value']:.3f} | {v['settings']} | {v['best_baseline']} "
                          f"{v['best_baseline_mean']:.3f} | {v['margin']:+.3f} | "
                          f"{v['best_candidate']} {v['best_candidate_mean']:.3f} |"
                          for s, v in k["per_group"].items()]
    sug = summary["suggestion_overall"]
    lines += ["", "Suggested label right on flipped examples (mean over settings):", "",
              "| rule | accuracy |", "|---|---|"]
    lines += [f"| {r} | {a:.3f} |" for r, a in sorted(sug.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines) + "\n"


def selection_report(out: Path, split: str, runs: dict[str, dict], default: str,
                     planned: int = 0, rule: str = "") -> str:
    """Write the split's summary as report suspects_<split>; `planned`: how many runs the
    command asked for (a partial summary says so); `rule`: the app's suggestion rule."""
    summary = summarise(split, runs, default, planned, rule)
    md = selection_markdown(summary)
    write_report(out, f"suspects_{split}", summary, md, {})
    return md
