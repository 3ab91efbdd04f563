"""The docs/benchmarks.md paragraph on what the cleaning-rounds goal asks of a queue in each
judged setting, from each rounds report's derived "goal_demand" (evaluation.round_goal)."""

from __future__ import annotations

from .benchmarks_doc import Reports, num, table


def _where(p: dict | None) -> str:
    if p is None:
        return "none"
    return (f"{p['queue']}, round {num(p['round'])}: {num(p['gap_closed'], 3)} with "
            f"{num(p['flips_left'], 0)} flips left")


def _estimate(d: dict) -> str:
    if d["reached"] is None:
        return "no estimate: no measured queue reached it"
    if not d["ordered"]:
        return "no estimate: a queue that left fewer flips closed less"
    return (f"{num(d['flips_left_at_target'], 0)} flips left, so "
            f"{num(d['share_at_target'], 3)} of the decisions on flips")


def goal_demand(r: Reports, names: list[str], gap_min: float) -> str:
    """One row per judged setting (gap at least `gap_min`): the measured points that bracket
    the goal, the interpolated flips left at the goal, and each queue's share of decisions
    that landed on a flip."""
    rows, target = [], None
    for n in names:
        x = r(n)
        d = x["derived"].get("goal_demand")
        if d is None or x["derived"]["gap"] < gap_min:
            continue
        s, target = x["setting"], d["target"]
        shares = d["share_on_flips"]
        rows.append([f"{s['dataset']}/{s['model']}, {num(s['noise'], 1)} {s['noise_kind']}",
                     _where(d["fewest_short"]), _where(d["reached"]), _estimate(d),
                     " / ".join(num(shares[q], 3) if q in shares else "n/a"
                                for q in ("app", "cleanlab", "perfect"))])
    if not rows:
        return ""
    return (f"What closing {num(target, 1)} of the gap asks of a queue, per judged setting. "
            "Each queue's rounds are points (flips left, gap closed; means over seeds). The "
            f"goal is bracketed by the point at or above {num(target, 1)} that leaves the most "
            "flips and the point below it that leaves the fewest; a straight line between "
            "those two estimates the flips a queue may leave, and so the share of the "
            "budget's decisions that must land on a flip. It is an interpolation between two "
            "measured points, not a measurement, and it is made only where those points are "
            "in order. The last column is the share each queue's decisions did put on flips "
            "over both rounds.\n\n"
            + table(["setting", "below the goal, fewest flips left",
                     "at or above the goal, most flips left", "estimate at the goal",
                     "decisions on flips: app / cleanlab / perfect"],
                    rows))
