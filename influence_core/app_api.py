"""What the dashboard asks of the core, as plain functions over exported objects.

Each function composes the public API (index, audit session, decision log) into an answer a page
can draw: numpy arrays, pandas frames, bytes. Nothing here knows Streamlit; the CLI can call the
same functions. Scores follow attribution.py: positive = helpful (lowers the query's loss).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .attribution.index import AttributionIndex, index_curvature, index_scores, load_index
from .attribution.precompute import precompute
from .audit.session import AuditSession, AuditState, non_finite_message, open_session
from .audit.store import Decision, DecisionLog, DecisionLogError, active_decisions
from .audit.suggest import Suggester, best_other, class_scores, class_support
from .audit.suspects import RANKINGS, suspect_scores
from .audit.unlearning import updated_model
from .config import EKFACConfig, IndexConfig, LissaConfig
from .curvature.gradients import TrackedModel, backward_pairs, forward_capture
from .data.datasets import DatasetError, ImageDataset, subset
from .data.models import CheckpointError
from .data.registry import Problem
from .data.training import predict_logits
from .progress import Progress, silent
from .serving import check_cost

QUEUE_SIZE = 500  # suspects in the queue: the most suspect under the chosen ranking
# what a page shows as a one-line message (the user's files or settings, not a bug)
INPUT_ERRORS = (DatasetError, CheckpointError, DecisionLogError)


def open_index(problem: Problem, progress: Progress = silent) -> AttributionIndex:
    """Precompute (or reuse) the EK-FAC attribution index of problem's model (default configs,
    damping 0.1 x the mean eigenvalue per layer: the factor with the best LDS on digits/mlp),
    then load it."""
    return load_index(precompute(problem, "ekfac", EKFACConfig(), IndexConfig(), progress=progress),
                      problem.model)


DEFAULT_RANKING = "default"  # the suspects.RANKINGS key that orders the queue unless chosen
INDEX_RANKING = "self_influence"  # the key ordered by the index's own self-influence
# Up to this many training images (digits, MNIST, Fashion-MNIST, CIFAR-10) a ranking is computed
# by suspect_scores: up to 6 extra trainings at setup (minutes for MNIST on 2 cores), cached.
RANKED_LIMIT = 70_000


def open_audit(problem: Problem, index: AttributionIndex, method: str = "ekfac",
               damping: float | None = None, queue_size: int = QUEUE_SIZE,
               progress: Progress = silent, ranking: str = DEFAULT_RANKING) -> AuditSession:
    """audit.open_session (the Newton step's curvature `method`; `damping` resolved by
    audit.unlearning.newton_damping, None: 1000 x the recipe's weight decay, 1e-3 without one)
    over a queue of the `queue_size` most suspect training examples under
    suspects.RANKINGS[ranking]. "self_influence": the index's precomputed self-influence,
    re-ranked under the updated model after every decision; any other key: its signal's
    suspects.suspect_scores (the session's fixed `prior`; extra trainings report through
    `progress` and are cached). The session's `ranking` is queue_ranking's key (after a
    fall-back, "self_influence"); its decisions record it. Raises as queue_ranking does."""
    ranking, prior = queue_ranking(problem, ranking), None
    if ranking != INDEX_RANKING:
        prior = suspect_scores(problem, RANKINGS[ranking].signal, progress=progress).double()
    self_inf = torch.from_numpy(np.asarray(index.arrays["self_influence"], dtype=np.float64))
    order = self_inf if prior is None else prior
    queue = torch.topk(order, min(queue_size, len(order))).indices
    fitted = index_curvature(index) if method == "ekfac" else None  # the index's fit, reused
    return open_session(problem, method, None, progress, damping, fitted,
                        suspects=queue, prior=prior, ranking=ranking)


def queue_ranking(problem: Problem, ranking: str) -> str:
    """The RANKINGS key that orders problem's queue when `ranking` is chosen (INDEX_RANKING
    beyond RANKED_LIMIT training examples and for a model trained on a subset). Raises
    ValueError for a key not in RANKINGS, DatasetError for a training set of one class
    (nothing to relabel to, no suggestion to make)."""
    if problem.train.num_classes < 2:
        raise DatasetError(f"{problem.config.dataset} has a single class "
                           f"({', '.join(problem.train.class_names)}): reviewing labels needs "
                           "at least two (for an image folder: one sub-folder per class)")
    if ranking not in RANKINGS:
        raise ValueError(f"unknown ranking {ranking!r}; choose from {', '.join(RANKINGS)}")
    if len(problem.train) > RANKED_LIMIT or problem.config.subset_seed >= 0:
        return INDEX_RANKING
    return ranking


def check_estimator(problem: Problem, method: str) -> None:
    """serving.check_cost for the Newton step's `method` on problem's model (all its tracked
    parameters, LiSSA at its default depth): TooCostlyError naming a cheaper estimator."""
    check_cost(method, TrackedModel(problem.model).num_params, LissaConfig().depth)


def _probs(logits: torch.Tensor) -> np.ndarray:
    return logits.double().softmax(1).numpy()


def query_probabilities(state: AuditState) -> np.ndarray:
    """(M, K) class probabilities of the current model on the queries (the test split)."""
    return _probs(state.test_logits)


def train_probabilities(state: AuditState, train: ImageDataset, indices: list[int]) -> np.ndarray:
    """(len(indices), K) class probabilities of the current model on training examples."""
    idx = torch.as_tensor(indices, dtype=torch.long)
    return _probs(predict_logits(state.model, subset(train.with_labels(state.labels), idx)))


def reviewed(log: DecisionLog) -> dict[int, Decision]:
    """training index -> its last active relabel / remove / keep decision."""
    return {d.index: d for d in active_decisions(log.decisions())}


def review_queue(session: AuditSession, state: AuditState) -> pd.DataFrame:
    """One row per remaining suspect, most suspect first: index, label (current), prediction,
    confidence, alternative (most probable class other than the label), suspicion (what the
    queue is sorted by), score (self-influence under the current model), loss, decision (last
    active action, "" when not reviewed)."""
    idx = state.suspects.tolist()
    probs = _probs(state.suspect_logits)  # computed with the state (one forward)
    labels = state.labels[state.suspects].numpy()
    others = probs.copy()
    others[np.arange(len(idx)), labels] = -1.0
    done = reviewed(session.log)
    return pd.DataFrame({
        "index": idx, "label": labels, "prediction": probs.argmax(1),
        "confidence": probs.max(1) if len(idx) else np.zeros(0), "alternative": others.argmax(1),
        "suspicion": (state.suspect_scores if session.prior is None
                      else session.prior[state.suspects]).double().numpy(),
        "score": state.suspect_scores.double().numpy(),
        "loss": state.suspect_losses.double().numpy(),
        "decision": [done[i].action if i in done else "" for i in idx],
    })


@dataclass(frozen=True)
class Evidence:
    """Why a training example is flagged: training examples that most support / oppose its
    given label (indices, scores), the summed support of the top examples per class (K,), and
    the suggested label (never the given label; see `evidence`)."""

    support: tuple[np.ndarray, np.ndarray]
    oppose: tuple[np.ndarray, np.ndarray]
    class_support: np.ndarray
    suggested: int


def evidence(index: AttributionIndex, train: ImageDataset, i: int, label: int,
             k: int = 8, probs: np.ndarray | None = None) -> Evidence:
    """Index scores of every training example on example i's loss under each class c (K query
    vectors, one pass over the index); support for c = sum of the k largest scores, each
    class's scores on one scale (audit.suggest.class_support; example i itself excluded).
    `suggested`: the most probable class other than `label` under `probs` (the current
    model's probabilities of example i, audit.suggest's "model" rule), or, without them, under
    the base model's logits stored in the index."""
    scores = class_scores(index, train, i)
    given = scores[label].nan_to_num(0.0)
    support = class_support(scores, k)
    if probs is None:
        probs = np.asarray(index.arrays["train_logits"][i], dtype=np.float64)
    suggested = int(best_other(np.asarray(probs)[None], np.array([label]))[0])
    hi, lo = given.topk(k), (-given).topk(k)
    return Evidence((hi.indices.numpy(), hi.values.double().numpy()),
                    (lo.indices.numpy(), -lo.values.double().numpy()), support, suggested)


def open_suggester(problem: Problem, ranking: str) -> Suggester:
    """The Review card's suggestion rule (audit.suggest.APP_RULE) for a session whose queue
    `ranking` (a RANKINGS key) orders: it reuses the probabilities that ranking computed."""
    return Suggester(problem, RANKINGS[ranking].signal if ranking in RANKINGS else "")


def suggested_label(probs: np.ndarray, given: int) -> int:
    """The label a Review card suggests (and Relabel applies by default): the most probable
    class other than `given` under `probs` (K,), the current model's probabilities."""
    return int(best_other(np.asarray(probs)[None], np.array([given]))[0])


PREVIEW_TEST = 1000  # test images a preview evaluates (a fixed seeded subset; all if fewer)


@dataclass(frozen=True)
class Preview:
    """What an edit would do, before it is committed: the change of the mean test loss and the
    test predictions it flips (frame: index, label, before, after), on `evaluated` test images.
    `refused`: why the edit would be refused ("" when it would not): a non-finite change."""

    test_loss_change: float
    flips: pd.DataFrame
    evaluated: int = 0
    refused: str = ""


def preview_indices(n_test: int, limit: int = PREVIEW_TEST) -> torch.Tensor:
    """The test images previews evaluate: all of them, or a fixed seeded `limit` (sorted)."""
    if n_test <= limit:
        return torch.arange(n_test)
    return torch.randperm(n_test, generator=torch.Generator().manual_seed(0))[:limit].sort().values


def preview(session: AuditSession, state: AuditState, i: int, action: str,
            label: int | None = None, limit: int = PREVIEW_TEST) -> Preview:
    """Preview relabel (to `label`) or remove of training example i on top of `state`'s edits:
    one batched Newton step from the base model, then `limit` test images (preview_indices),
    against `state`."""
    remove, relabel = list(state.edits[0]), dict(state.edits[1])
    relabel.pop(i, None)
    if action == "remove":
        remove = sorted({*remove, i})
    elif label is not None and label != int(session.train.labels[i]):
        relabel[i] = int(label)
    model = updated_model(session.curvature, session.model_delta(remove, relabel))
    test = session.problem.test
    idx = preview_indices(len(test), limit)
    after = predict_logits(model, subset(test, idx))
    before = state.test_logits_of(idx)
    y = test.labels[idx]
    loss = torch.nn.functional.cross_entropy
    change = float(loss(after.double(), y) - loss(before.double(), y))
    if not math.isfinite(change):  # the decision would be refused too (AuditSession.check_step)
        return Preview(change, pd.DataFrame(columns=["index", "label", "before", "after"]),
                       len(idx), non_finite_message(session.damping))
    before_pred, after_pred = before.argmax(1), after.argmax(1)
    flipped = torch.nonzero(before_pred != after_pred)[:, 0]
    return Preview(change, pd.DataFrame({
        "index": idx[flipped].numpy(), "label": y[flipped].numpy(),
        "before": before_pred[flipped].numpy(), "after": after_pred[flipped].numpy()}), len(idx))


def explain(index: AttributionIndex, x: torch.Tensor | np.ndarray,
            k: int = 8) -> tuple[int, np.ndarray, tuple[np.ndarray, np.ndarray],
                                  tuple[np.ndarray, np.ndarray]]:
    """For one normalised query image x (C, H, W): (predicted class, (K,) probabilities,
    (indices, scores) of the k most helpful and of the k most harmful training examples for
    that prediction)."""
    x = torch.as_tensor(x)
    with torch.no_grad():
        logits = index.tracked.model(x[None].to(next(index.tracked.model.parameters()).dtype))
    pred = int(logits.argmax(1))
    scores = index_scores(index, x, pred)
    hi, lo = scores.topk(k), (-scores).topk(k)
    return (pred, _probs(logits)[0], (hi.indices.numpy(), hi.values.double().numpy()),
            (lo.indices.numpy(), -lo.values.double().numpy()))


def query_vectors(index: AttributionIndex, data: ImageDataset, batch_size: int = 512
                  ) -> torch.Tensor:
    """(M, dim) index rows of every example of `data` as a query (its predicted label), so
    that scores on all queries of training example i are projection.scores(x_i, them)."""
    tracked, out = index.tracked, []
    dtype = next(tracked.model.parameters()).dtype
    for lo in range(0, len(data), batch_size):
        x = data.tensor(slice(lo, lo + batch_size)).to(dtype)
        store, outputs = forward_capture(tracked, x)
        y = outputs.detach().argmax(1)
        pairs = backward_pairs(tracked, store, index.task.measurement(outputs, y))
        with torch.no_grad():
            out.append(index.projection.project(pairs)[0].to(index.vectors.dtype))
    return torch.cat(out)


def influenced_queries(index: AttributionIndex, queries: torch.Tensor, i: int,
                       k: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(query indices, scores) of the k queries whose loss training example i moves most
    (largest |score|); queries from `query_vectors`."""
    scores = index.projection.scores(index.vectors[i][None], queries)[0]
    top = scores.abs().topk(min(k, len(scores))).indices
    return top.numpy(), scores[top].double().numpy()


def self_influence_values(index: AttributionIndex) -> np.ndarray:
    """(N,) precomputed EK-FAC self-influence of every training example (base model)."""
    return np.asarray(index.arrays["self_influence"], dtype=np.float64)


def train_predictions(index: AttributionIndex) -> np.ndarray:
    """(N,) the base model's predicted class of every training example."""
    return np.asarray(index.arrays["train_logits"]).argmax(1)


def checkpoint_bytes(state: AuditState) -> bytes:
    """The current model's state_dict, as torch.save writes it (load with weights_only=True)."""
    buf = io.BytesIO()
    torch.save(state.model.state_dict(), buf)
    return buf.getvalue()


IHVP_METHODS = ("ekfac", "kfac", "identity")  # compared against the exact damped Gauss-Newton
EXACT_PARAMS = 5_000  # the dense solve is O(p^3): seconds at this size on 2 CPU cores


def ihvp_errors(problem: Problem, methods: tuple[str, ...] = IHVP_METHODS, vectors: int = 16,
                seed: int = 0) -> tuple[str, dict[str, float]]:
    """(layers, {method: relative error}): ||ihvp(v) - exact(v)|| / ||exact(v)|| of each
    estimator restricted to the model's last tracked layers (as many as fit EXACT_PARAMS; the
    exact solve is dense), v = training gradients of `vectors` seeded examples, at the exact
    solve's default damping: evaluation.ihvp.ihvp_errors_vs_exact, the measurement `bench core`
    reports."""
    from .evaluation.ihvp import ihvp_errors_vs_exact

    res = ihvp_errors_vs_exact(problem.model, problem.train, methods, vectors, seed,
                               max_params=EXACT_PARAMS)
    row = res["by_damping"][1.0]
    return ", ".join(res["layers"]), {m: row[m] for m in methods}
