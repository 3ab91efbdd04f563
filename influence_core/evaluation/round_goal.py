"""What the cleaning-rounds goal asks of a queue, from a rounds report's own measurements.

Every (queue, round) of a report is a point: the flips its labels still carry (mean over seeds)
and the gap its retrain closed (mean over seeds). The point short of the goal that leaves the
fewest flips, and the point at or above it that leaves the most, bracket the goal; the line
through them estimates how many flips a queue may leave and still close the goal's fraction,
and so what share of the budget's decisions must land on a flip. It is an interpolation between
two measured points, not a measurement: where the points are not ordered (a queue that left
fewer flips closed less), no estimate is made. Beside it, the share each queue's decisions
actually put on flips over all rounds.
"""

from __future__ import annotations

GOAL_GAP_CLOSED = 0.9  # targets.json "rounds" goal_gap_closed_min (a test keeps them equal)


def _point(queue: str, row: dict) -> dict:
    return {"queue": queue, "round": row["round"], "flips_left": row["flips_left"],
            "gap_closed": row["gap_closed_retrained"]}


def flips_and_decisions(result: dict) -> tuple[float, int]:
    """A rounds report's flips (mean over seeds) and the decisions its budget allows over all
    rounds."""
    s, seeds = result["setting"], result["seeds"]
    return sum(v["flips"] for v in seeds) / len(seeds), s["rounds"] * s["decisions_per_round"]


def goal_demand(result: dict, target: float = GOAL_GAP_CLOSED) -> dict | None:
    """The bracket of `target` among the report's (queue, round) points and, where they are
    ordered, the interpolated flips left and share of decisions on flips at `target`; None for
    a report without rounds."""
    flips, decisions = flips_and_decisions(result)
    points = [_point(q, row) for q, rows in result["summary"].items() for row in rows
              if row["gap_closed_retrained"] is not None and row["flips_left"] is not None]
    if not points:
        return None
    shares = {q: (flips - rows[-1]["flips_left"]) / decisions
              for q, rows in result["summary"].items() if rows[-1]["flips_left"] is not None}
    reached = [p for p in points if p["gap_closed"] >= target]
    short = [p for p in points if p["gap_closed"] < target]
    out = {"target": target, "decisions": decisions, "flips": flips,
           "share_on_flips": shares,
           "reached": max(reached, key=lambda p: p["flips_left"], default=None),
           "fewest_short": min(short, key=lambda p: p["flips_left"], default=None),
           "ordered": None, "flips_left_at_target": None, "share_at_target": None}
    a, b = out["reached"], out["fewest_short"]
    if a is None or b is None:
        return out
    out["ordered"] = b["flips_left"] > a["flips_left"]
    if out["ordered"]:
        slope = (a["gap_closed"] - b["gap_closed"]) / (a["flips_left"] - b["flips_left"])
        at = b["flips_left"] + (target - b["gap_closed"]) / slope
        out["flips_left_at_target"] = at
        out["share_at_target"] = (flips - at) / decisions
    return out
