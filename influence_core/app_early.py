"""The Review page's first card before the attribution index exists.

A ranking other than self-influence orders the queue by its own suspect scores
(audit.suspects.suspect_scores) and suggests a label from the model's and the ranking's
out-of-sample probabilities (audit.suggest.Suggester): neither needs the index. So the app can
show the first suspect (its image, given label, the model's probabilities and the suggested
label) as soon as the ranking is computed, and build the index (about a third of the Setup step
for MNIST) while the annotator looks at it. Deciding waits for the index: it supplies the card's
influence evidence and the Newton step's curvature (app_api.open_audit).

The early card is the one the full page opens on: the same queue order (the ranking's top
QUEUE_SIZE, most suspect first), the same decision log (reviewed and removed examples skipped)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .app_api import INDEX_RANKING, QUEUE_SIZE, open_suggester, queue_ranking
from .audit.session import decision_log_path
from .audit.store import DecisionLog
from .audit.suspects import RANKINGS, suspect_scores
from .data.datasets import subset
from .data.registry import Problem
from .data.training import predict_logits
from .progress import Progress, silent


@dataclass(frozen=True)
class EarlyCard:
    """The first suspect of a queue: training index, its current label, the model's class
    probabilities (K,), the suggested label and what the suggestion averages; `position` is
    its place among the queue's `queued` unreviewed suspects (0: the first)."""

    index: int
    label: int
    probs: np.ndarray
    suggested: int
    suggestion: str
    ranking: str
    position: int
    queued: int


def early_queue(problem: Problem, ranking: str, progress: Progress = silent,
                queue_size: int = QUEUE_SIZE) -> tuple[list[int], dict[int, int | None]] | None:
    """The unreviewed suspects of problem's queue under `ranking`, most suspect first, exactly
    as the audit session orders them (app_api.open_audit), and the log's edits (index -> new
    label, None: removed), without the index; None when the queue needs the index (the
    self-influence ranking, or a fall-back to it)."""
    ranking = queue_ranking(problem, ranking)
    if ranking == INDEX_RANKING:
        return None
    prior = suspect_scores(problem, RANKINGS[ranking].signal, progress=progress).double()
    queue = torch.topk(prior, min(queue_size, len(prior))).indices
    order = torch.argsort(prior[queue], descending=True, stable=True)
    log = DecisionLog(decision_log_path(problem), problem.train.labels,
                      problem.train.num_classes)
    try:
        edits, reviewed = log.edits(), {d.index for d in log.active_decisions()}
    finally:
        log.close()
    reviewed |= set(edits)
    return [int(i) for i in queue[order] if int(i) not in reviewed], edits


def early_card(problem: Problem, ranking: str, pinned: int | None = None,
               progress: Progress = silent) -> EarlyCard | None:
    """The card for `pinned` (a training index, e.g. from the page's URL) when it is one, else
    for the first unreviewed suspect; None when the queue needs the index or is empty."""
    found = early_queue(problem, ranking, progress)
    if found is None or not found[0]:
        return None
    queue, edits = found
    i = pinned if pinned is not None and 0 <= pinned < len(problem.train) else queue[0]
    label = int(problem.train.labels[i] if edits.get(i) is None else edits[i])
    one = subset(problem.train, torch.tensor([i]))
    probs = predict_logits(problem.model, one).double().softmax(1)[0].numpy()
    used = queue_ranking(problem, ranking)
    suggester = open_suggester(problem, used)
    return EarlyCard(i, label, probs, suggester.suggest(i, label, probs), suggester.describe(),
                     used, queue.index(i) if i in queue else -1, len(queue))
