"""Label noise for the mislabel experiments: which training labels are flipped, and to what.

Every kind flips exactly round(fraction * N) labels, each to a class other than its clean one,
seeded by `seed` (the same call gives the same flips):
  uniform   examples chosen uniformly at random; each gets a uniformly random other class.
  pair      classes are matched in pairs of similar classes (below); examples are chosen
            uniformly among those whose class has a partner, and each gets its partner's label
            (asymmetric noise as in Patrini et al. 2017: an annotator confuses 3 and 8).
  instance  each chosen example gets the label that an independently trained weak model finds
            most plausible for that very image (its most probable class other than the clean
            one); examples are chosen with probability proportional to how much probability
            the weak model puts on other classes (ambiguous images are flipped more often: the
            mistakes of a hurried annotator).
The weak model is a softmax regression on the pixels, fitted to the clean labels (full-batch
L-BFGS, float64, L2 1e-3, 50 iterations). "Similar classes" for `pair`: the weak model's
confusion C[i, j] (mean probability of class j on examples of class i), symmetrised; pairs are
taken greedily, most confused first (an odd class count leaves the least confusable class
unpaired). Flips of `instance` and `pair` depend on that fit, so they are cached per dataset
under artifacts/noise (float round-off across machines cannot change the labels a checkpoint
was trained on).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..config import artifacts_root
from .datasets import ImageDataset, inject_label_noise

NOISE_KINDS = ("uniform", "pair", "instance")
WEAK_ITERATIONS, WEAK_L2 = 50, 1e-3


def weak_model_probs(data: ImageDataset) -> torch.Tensor:
    """(N, K) probabilities of a softmax regression on data's pixels fitted to data's labels."""
    x = data.tensor(slice(None)).reshape(len(data), -1).double()
    x = torch.cat([(x - x.mean(0)) / x.std(0).clamp_min(1e-6), x.new_ones(len(x), 1)], 1)
    w = torch.zeros(x.shape[1], data.num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=WEAK_ITERATIONS, line_search_fn="strong_wolfe")
    y = data.labels

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w, y) + WEAK_L2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (x @ w).softmax(1)


def class_pairs(probs: torch.Tensor, labels: torch.Tensor) -> list[tuple[int, int]]:
    """Pairs of classes, most confused first (greedy on the symmetrised confusion)."""
    k = probs.shape[1]
    conf = torch.zeros(k, k, dtype=torch.float64)
    for c in range(k):
        if (labels == c).any():
            conf[c] = probs[labels == c].mean(0)
    sym = conf + conf.T
    sym.fill_diagonal_(-1.0)
    pairs, free = [], set(range(k))
    for flat in torch.argsort(sym.flatten(), descending=True, stable=True).tolist():
        i, j = divmod(flat, k)
        if i < j and i in free and j in free and sym[i, j] >= 0:
            pairs.append((i, j))
            free -= {i, j}
    return pairs


def _gumbel_top(weights: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` indices drawn without replacement with probability proportional to `weights`."""
    rng = np.random.default_rng(seed)
    keys = np.log(np.maximum(weights, 1e-300)) + rng.gumbel(size=len(weights))
    keys[weights <= 0] = -np.inf
    return np.sort(np.argsort(-keys, kind="stable")[:count])


def _pair_noise(probs: torch.Tensor, labels: torch.Tensor, count: int, seed: int
                ) -> torch.Tensor:
    partner = torch.full((probs.shape[1],), -1, dtype=torch.long)
    for i, j in class_pairs(probs, labels):
        partner[i], partner[j] = j, i
    eligible = torch.nonzero(partner[labels] >= 0)[:, 0]
    if count > len(eligible):
        raise ValueError(f"pair noise: {count} flips asked, only {len(eligible)} examples have "
                         "a partner class")
    gen = torch.Generator().manual_seed(seed)
    chosen = eligible[torch.randperm(len(eligible), generator=gen)[:count]]
    noisy = labels.clone()
    noisy[chosen] = partner[labels[chosen]]
    return noisy


def _instance_noise(probs: torch.Tensor, labels: torch.Tensor, count: int, seed: int
                    ) -> torch.Tensor:
    others = probs.clone()
    others[torch.arange(len(labels)), labels] = -1.0
    ambiguity = (1.0 - probs[torch.arange(len(labels)), labels]).clamp_min(0).numpy()
    chosen = torch.from_numpy(_gumbel_top(ambiguity + 1e-12, count, seed))
    noisy = labels.clone()
    noisy[chosen] = others[chosen].argmax(1)
    return noisy


def _cache_key(data: ImageDataset, kind: str, fraction: float, seed: int) -> str:
    h = hashlib.sha256()
    h.update(data.labels.numpy().tobytes())
    h.update(data.tensor(torch.arange(min(len(data), 64))).numpy().tobytes())
    h.update(f"{len(data)}-{kind}-{fraction!r}-{seed}-{WEAK_ITERATIONS}-{WEAK_L2}".encode())
    return h.hexdigest()[:16]


def inject_noise(data: ImageDataset, kind: str, fraction: float, seed: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy labels, flip mask) of `kind` (NOISE_KINDS) flipping round(fraction * N) of
    data's labels; see the module docstring for the rules."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {NOISE_KINDS}")
    if kind == "uniform":
        return inject_label_noise(data.labels, fraction, data.num_classes, seed)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"noise fraction must be in [0, 1), got {fraction}")
    labels, count = data.labels, round(fraction * len(data))
    path = artifacts_root() / "noise" / f"{kind}-{_cache_key(data, kind, fraction, seed)}.pt"
    noisy = torch.load(path, weights_only=True) if path.is_file() else None
    if not (isinstance(noisy, torch.Tensor) and noisy.shape == labels.shape
            and noisy.dtype == labels.dtype):  # missing, or not what this code writes

        probs = weak_model_probs(data)
        make = _pair_noise if kind == "pair" else _instance_noise
        noisy = make(probs, labels, count, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(noisy, tmp)
        tmp.replace(path)
    return noisy, noisy != labels
