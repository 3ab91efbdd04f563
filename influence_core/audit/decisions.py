"""What a set of decisions means, apart from where it is stored (store.DecisionLog).

Replay: the active (not undone) decisions in id order; for each index the last relabel / remove
wins, and `keep` changes nothing. A batch of requests is validated as a whole against that
state (plan_undos, plan_records) before any of it is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ACTIONS = ("relabel", "remove", "keep", "undo")
REMOVED = None  # in `edits()`: the index is removed from the training set
Request = tuple[str, int, "int | None"]  # (action, training index or undone id, new label)


@dataclass(frozen=True)
class Decision:
    id: int
    index: int  # training-set index
    action: str  # relabel | remove | keep | undo
    label: int | None  # the new label (relabel only)
    annotator: str
    ts: str  # ISO 8601, UTC, microseconds
    model_version: int  # the model version the annotator was looking at
    undoes: int | None = None  # undo only: the id of the undone decision
    ranking: str = ""  # the suspect ranking the queue was ordered by ("" when unknown)


def active_decisions(decisions: Sequence[Decision]) -> list[Decision]:
    """The relabel / remove / keep decisions not undone, in id order."""
    undone = {d.undoes for d in decisions if d.action == "undo"}
    return [d for d in decisions if d.action != "undo" and d.id not in undone]


def edits(decisions: Sequence[Decision], base_labels: Sequence[int]) -> dict[int, int | None]:
    """index -> final label, or REMOVED (None), for every index whose state differs from the
    base training set. Replays the active decisions in id order; the last one per index wins."""
    state: dict[int, int | None] = {}
    for d in active_decisions(decisions):
        if d.action == "relabel":
            state[d.index] = d.label
        elif d.action == "remove":
            state[d.index] = REMOVED
    return {i: y for i, y in state.items() if y is REMOVED or y != base_labels[i]}


@dataclass(frozen=True)
class Plan:
    """A validated batch: what to write, what was already in force, and the resulting edits."""

    undos: list[Decision]  # the decisions to undo
    writes: list[Request]  # the (action, index, label) rows to insert after them
    notes: list[str]  # the requests already in force, skipped
    edits: dict[int, int | None]  # `edits` of the log after the batch


def plan_batch(rows: list[Decision], labels: list[int], num_classes: int,
               requests: Sequence[Request]) -> Plan:
    """Validate a batch of requests against the log's `rows` (undos first, then the rest, see
    plan_undos / plan_records). Raises ValueError naming every refused request (at most 5)."""
    errors, notes, undos = plan_undos(rows, requests)
    live = [d for d in active_decisions(rows) if d.id not in {u.id for u in undos}]
    writes = plan_records(live, labels, num_classes, requests, errors, notes)
    if errors:
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ValueError("; ".join(errors[:5]) + more + ": nothing recorded")
    after = edits(live + [Decision(0, i, a, y, "", "", 0) for a, i, y in writes], labels)
    return Plan(undos, writes, notes, after)


def plan_undos(rows: list[Decision], requests: Sequence[Request]
               ) -> tuple[list[str], list[str], list[Decision]]:
    """(errors, notes, decisions to undo) for the batch's undo requests against the log's
    `rows`; an undo of an already undone decision is a note, not an error."""
    by_id, errors, notes, undos = {d.id: d for d in rows}, [], [], []
    undone = {d.undoes for d in rows if d.action == "undo"}
    for decision_id in dict.fromkeys(int(i) for a, i, _ in requests if a == "undo"):
        target = by_id.get(decision_id)
        if target is None:
            errors.append(f"no decision with id {decision_id}")
        elif target.action == "undo":
            errors.append(f"decision {decision_id} is an undo; undoes cannot be undone")
        elif decision_id in undone:
            notes.append(f"decision {decision_id} already undone")
        else:
            undos.append(target)
    return errors, notes, undos


def plan_records(live: list[Decision], labels: list[int], num_classes: int,
                  requests: Sequence[Request], errors: list[str], notes: list[str]
                  ) -> list[Request]:
    """The (action, index, label) rows to insert after `live` (active decisions); refusals go
    to `errors`, requests already in force to `notes`."""
    state, last = edits(live, labels), {d.index: d.action for d in live}
    seen: dict[int, tuple[str, int | None]] = {}
    writes = []
    for action, index, label in requests:
        if action == "undo":
            continue
        try:
            if action not in ("relabel", "remove", "keep"):
                raise ValueError(f"action must be relabel, remove or keep, got {action!r}")
            index = check_index(index, len(labels))
            label = check_label(label, num_classes) if action == "relabel" else None
        except ValueError as exc:
            errors.append(str(exc))
            continue
        if index in seen:  # the same request twice counts once; two different ones conflict
            if seen[index] != (action, label):
                errors.append(f"index {index}: two different decisions in one batch "
                              f"({_describe(*seen[index])} and {_describe(action, label)})")
            continue
        seen[index] = (action, label)
        current = state.get(index, labels[index])
        if current is REMOVED:
            if action == "remove":
                notes.append(f"index {index} already removed")
            else:
                errors.append(f"index {index} is removed: undo the removal first")
        elif action == "relabel" and label == current:
            notes.append(f"index {index} already has label {label}")
        elif action == "keep" and last.get(index) == "keep":
            notes.append(f"index {index} already kept")
        else:
            writes.append((action, index, label))
    return writes


def _describe(action: str, label: int | None) -> str:
    return f"relabel to {label}" if action == "relabel" else action


def check_index(index: int, n: int) -> int:
    if isinstance(index, bool) or not 0 <= int(index) < n or int(index) != index:
        raise ValueError(f"index {index} is outside the training set (0..{n - 1})")
    return int(index)


def check_label(label: int | None, num_classes: int) -> int:
    if label is None or isinstance(label, bool) or not 0 <= int(label) < num_classes \
            or int(label) != label:
        raise ValueError(f"label {label} is outside 0..{num_classes - 1}")
    return int(label)
