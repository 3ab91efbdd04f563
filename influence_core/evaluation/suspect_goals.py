"""The goals of `evaluate suspects`, per setting and per noise kind and regime: how a ranking
(or suggestion rule) compares with the best of its baselines in each."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np


def settings_met(table: dict, baselines: tuple[str, ...]) -> dict[str, int]:
    """Per name: in how many settings its mean is at least the best baseline's mean."""
    met: dict[str, int] = {}
    for per in table.values():
        best = max((per[b]["mean"] for b in baselines if b in per), default=None)
        for n, v in per.items():
            met[n] = met.get(n, 0) + int(best is not None and v["mean"] >= best)
    return met


def margins(table: dict, name: str, baselines: tuple[str, ...],
            ceiling: dict[str, float] | None = None, seeds: dict | None = None,
            not_ours: Collection[str] = ()) -> dict:
    """Per setting: `name`'s mean (its std and number of seeds) minus the best baseline's mean
    (>= 0: goal met there), and the best of our candidates there (every name but `not_ours`);
    with `ceiling` the most any ranking can find there (BUDGET x N / flips, at most one); with
    `seeds` (setting -> name -> seed -> value) the margin of each seed over that seed's value of
    the same best baseline."""
    goal = {}
    for setting, per in table.items():
        base = {b: per[b]["mean"] for b in baselines if b in per}
        if name in per and base:
            best = max(base, key=base.get)
            goal[setting] = {"value": per[name]["mean"], "std": per[name]["std"],
                             "seeds": per[name]["n"], "best_baseline": best,
                             "best_baseline_mean": base[best],
                             "margin": per[name]["mean"] - base[best]}
            ours = max((n for n in per if n not in not_ours), key=lambda n: per[n]["mean"])
            goal[setting].update(best_candidate=ours, best_candidate_mean=per[ours]["mean"])
            if seeds and setting in seeds:
                it, other = seeds[setting][name], seeds[setting][best]
                goal[setting]["seed_margins"] = {str(k): it[k] - other[k]
                                                 for k in sorted(it) if k in other}
            if ceiling and setting in ceiling:
                goal[setting]["most_possible"] = ceiling[setting]
    met = [g["margin"] >= 0 for g in goal.values()]
    return {"name": name, "per_setting": goal, "met": int(sum(met)), "of": len(met)}


def by_kind(table: dict, name: str, baselines: tuple[str, ...],
            not_ours: Collection[str] = ()) -> dict:
    """Per noise kind and regime: `name`'s and each baseline's mean over the settings of that
    kind and regime (of their means over seeds), `name`'s margin over the best of those baseline
    means, and the best of our candidates there (every name measured in each of those settings
    but `not_ours`), which says whether any candidate reaches the best baseline."""
    groups: dict[str, list[dict]] = {}
    for setting, per in table.items():
        parts = setting.split("_")  # ..._<kind>_<rate>_<regime>, see run_key
        groups.setdefault(f"{parts[-3]} {parts[-1]}", []).append(per)
    out = {}
    for group, pers in sorted(groups.items()):
        have = [p for p in pers if name in p]
        base = [b for b in baselines if have and all(b in p for p in have)]  # in each setting
        if not base:
            continue
        names = set.intersection(*(set(p) for p in have))
        mean = {n: float(np.mean([p[n]["mean"] for p in have])) for n in sorted(names)}
        best = max(base, key=lambda b: mean[b])
        ours = max((n for n in mean if n not in not_ours), key=lambda n: mean[n])
        out[group] = {"value": mean[name], "settings": len(have), "best_baseline": best,
                      "best_baseline_mean": mean[best], "margin": mean[name] - mean[best],
                      "best_candidate": ours, "best_candidate_mean": mean[ours]}
    met = sum(g["margin"] >= 0 for g in out.values())
    return {"per_group": out, "met": int(met), "of": len(out)}
