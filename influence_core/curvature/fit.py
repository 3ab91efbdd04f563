"""The Kronecker-factored fit, one implementation for the library (EKFAC.fit, KFAC.fit) and the
precompute (attribution.precompute): one config gives one set of factors.

Pass 1 (fit_covariances, fit_bases): pseudo-gradients -> per layer A = sum_t a a^T and
S = sum_t g g^T -> eigenbases, each eigenvector's largest entry positive (factors.canonical).
Pass 2 (fit_eigenvalues): pseudo-gradients -> Lambda[j, k] = E_i[R_i[j, k]^2] in those bases
(R_i = Q_S^T DW_i Q_A); heuristic damping.
A pass reads shards (s, lo, hi), positions lo..hi of fit_order's examples (None: the dataset);
pass 1 folds its float32 partial sums into float64 when a shard ends. Pseudo-labels are drawn
per batch from a generator seeded by the batch's first example index, so the labels do not depend
on which process takes which shard; `reduce` sums the passes' totals over processes (the
precompute's all-reduce under torchrun; nothing in one process). The library takes the whole
dataset in shards of the precompute's default size (plan): with the same config and products'
dtype, it sums what a one-process precompute with default shards sums, in the same order, so
their factors agree bit for bit on the same model (the precompute fits a channels-last copy);
tests/test_curvature.py compares them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import pairwise

import torch

from ..config import EKFACConfig, IndexConfig
from ..data.datasets import ImageDataset
from ..progress import Progress, silent
from .base import Pairs, fisher_pairs, model_dtype
from .factors import (
    KroneckerFactors,
    Rotation,
    canonical,
    eigenbasis,
    heuristic_damping,
    rotate_conv,
)
from .gradients import TrackedModel
from .task import Task

Shard = tuple[int, int, int]  # (shard number, first position, end position)
Reduce = Callable[[list[torch.Tensor]], None]  # sums tensors over processes, in place
# per layer (Q_A, Q_S, zero_a, zero_s): the bases (float64) and which of their directions have
# eigenvalue exactly 0 (pass 2 skips those; None: skip nothing)
Basis = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]
SHARD_SIZE = IndexConfig.shard_size  # the library's shards: a default precompute's


def one_process(tensors: list[torch.Tensor]) -> None:
    """The Reduce of a single process: its totals are already the sums."""


def shards(n: int, size: int, rank: int = 0, world: int = 1) -> list[Shard]:
    """Positions 0..n in shards of `size`; rank r of W takes shards r, r + W, ..."""
    return [(s, s * size, min(n, (s + 1) * size))
            for s in range(-(-n // size)) if s % world == rank]


def fit_order(n: int, cfg: EKFACConfig, covariances: bool = False) -> torch.Tensor | None:
    """The examples a fit pass sees: None (all n), or cfg.max_examples of them (with
    `covariances`, also at most cfg.covariance_max_examples), seeded and sorted, as Kronfluence's
    lambda_max_examples / covariance_max_examples. Prefixes of one permutation: the covariance
    examples are a subset of the eigenvalue examples."""
    limits = [cfg.max_examples] + ([cfg.covariance_max_examples] if covariances else [])
    limit = min((k for k in limits if k is not None), default=None)
    if limit is None or limit >= n:
        return None
    gen = torch.Generator().manual_seed(cfg.seed)
    return torch.randperm(n, generator=gen)[:limit].sort().values


def plan(n: int, cfg: EKFACConfig, covariances: bool = False
         ) -> tuple[list[Shard], torch.Tensor | None]:
    """One process's (shards, order) for a pass over fit_order's examples of n."""
    order = fit_order(n, cfg, covariances)
    return shards(n if order is None else len(order), SHARD_SIZE), order


def batches(data: ImageDataset, parts: list[Shard], batch: int, dtype: torch.dtype,
            order: torch.Tensor | None = None) -> Iterator:
    """(x, y, idx) batches of shards (s, lo, hi): positions lo..hi of `order` (None: of data)."""
    for _, lo, hi in parts:
        for start in range(lo, hi, batch):
            idx = torch.arange(start, min(hi, start + batch))
            idx = idx if order is None else order[idx]
            yield data.tensor(idx).to(dtype), data.labels[idx], idx


def pseudo_pairs(tracked: TrackedModel, task: Task, x: torch.Tensor, y: torch.Tensor,
                 idx: torch.Tensor, cfg: EKFACConfig, what: int,
                 compute: torch.dtype | None = None) -> list[Pairs]:
    """Pass `what`'s pseudo-gradients of a batch, their labels seeded by its first index. With
    `compute` (bfloat16) the forward runs under autocast (fisher_pairs; a bf16 forward-backward
    is 1.5x faster here)."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + what * 100_003 + int(idx[0]))
    return list(fisher_pairs(tracked, task, x, y, cfg.fisher, gen, compute))


def _count(parts: list[Shard]) -> int:
    return sum(hi - lo for _, lo, hi in parts)


class CovarianceSums:
    """Per layer A = sum_t a a^T and S = sum_t g g^T. Each batch is added in the model's dtype
    (in-place GEMMs on the upper block triangle, _panels) to a partial sum that is folded into
    the float64 totals every `fold` batches (0: only on flush()): no float64 copy of a
    d_in x d_in matrix per batch, float32 error bounded. `compute` (e.g. torch.bfloat16): the
    dtype of the products that dominate the
    cost, those of conv layers (T patches per example: mnist/cnn conv2 121); linear layers'
    stay in the model's dtype. A bfloat16 product is rounded to 8 bits before it is summed; on
    a digits CNN, keeping linear layers' products in float32 halved how far the bf16 fit moved
    pairwise scores (from 0.73 to 0.34 of what refitting with another pseudo-label seed moves
    them; tests/test_index.py bounds it by 1)."""

    def __init__(self, tracked: TrackedModel, fold: int = 32,
                 compute: torch.dtype | None = None) -> None:
        self.total = [[torch.zeros(s.d_in, s.d_in, dtype=torch.float64),
                       torch.zeros(s.d_out, s.d_out, dtype=torch.float64)] for s in tracked.specs]
        self.partial: list[list[torch.Tensor]] | None = None
        self.fold, self.batches, self.compute = fold, 0, compute

    def add(self, pairs: Pairs, count_inputs: bool) -> None:
        """A += sum_t a a^T (once per batch: `count_inputs`), S += sum_t g g^T."""
        if self.partial is None:
            self.partial = [[torch.zeros_like(t, dtype=torch.promote_types(g.dtype, torch.float32))
                             for t in c] for c, (_, g) in zip(self.total, pairs)]  # >= float32
        for c, (a, g) in zip(self.partial, pairs):
            conv = a.shape[1] > 1
            if count_inputs:
                self._add(c[0], a.reshape(-1, a.shape[-1]), conv)
            self._add(c[1], g.reshape(-1, g.shape[-1]), conv)
        if count_inputs:
            self.batches += 1
            if self.fold and self.batches % self.fold == 0:
                self.flush()

    def _add(self, total: torch.Tensor, x: torch.Tensor, in_compute: bool) -> None:
        if in_compute and self.compute is not None:
            x = x.to(self.compute)
            total += (x.T @ x).to(total.dtype)
            return
        x = x.to(total.dtype)
        cuts = _panels(x.shape[1])
        for lo, hi in pairwise(cuts):  # block rows of the upper triangle; flush mirrors
            total[lo:hi, lo:].addmm_(x[:, lo:hi].T, x[:, lo:])

    def flush(self) -> None:
        if self.partial is not None:
            for c, part in zip(self.total, self.partial):
                for t, q in zip(c, part):
                    cuts = _panels(q.shape[0])
                    for lo, hi in pairwise(cuts[1:]):
                        q[lo:hi, :lo] = q[:lo, lo:hi].T
                    t += q.double()
                    q.zero_()

    def sums(self) -> list[list[torch.Tensor]]:
        """The float64 totals (all batches so far)."""
        self.flush()
        return self.total


def _panels(d: int) -> list[int]:
    """Cuts of a d x d Gram matrix into block rows of about 96 (at most 6): X^T X accumulates
    only the blocks on and above the diagonal, one GEMM per block row (measured here,
    float32, 2 threads: mnist/cnn conv2's 289 columns x 15488 patch rows 18.2 -> 13.8 ms;
    fc1's 1601 x 128 rows 5.6 -> 3.1 ms)."""
    blocks = max(1, min(6, d // 96))
    return [round(d * i / blocks) for i in range(blocks + 1)]



def fit_covariances(
    tracked: TrackedModel, task: Task, data: ImageDataset, cfg: EKFACConfig, parts: list[Shard],
    progress: Progress = silent, order: torch.Tensor | None = None,
    compute: torch.dtype | None = None, reduce: Reduce = one_process,
) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
    """Pass 1: per layer [A, S] summed over the examples (float64), and per layer the number of
    positions t summed over them (float64; T per example for conv layers, 1 for linear ones).
    The forward and the conv layers' products in `compute` (CovarianceSums)."""
    sums = CovarianceSums(tracked, fold=0, compute=compute)  # folded per shard
    positions, done, total = [0.0] * len(tracked.specs), 0, _count(parts)
    with tracked.inputs_in(compute):
        for shard in parts:
            for x, y, idx in batches(data, [shard], cfg.batch_size, model_dtype(tracked), order):
                draws = pseudo_pairs(tracked, task, x, y, idx, cfg, 1, compute)
                for draw, pairs in enumerate(draws):
                    sums.add(pairs, count_inputs=draw == 0)
                for layer, (a, _) in enumerate(draws[0]):
                    positions[layer] += a.shape[0] * a.shape[1]
                done += len(idx)
                progress(done, total, "fit covariances")
            sums.flush()
    covs, counted = sums.sums(), torch.tensor(positions, dtype=torch.float64)
    reduce([*(t for c in covs for t in c), counted])
    return covs, counted


def eigenbases(covs: list[list[torch.Tensor]]
               ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per layer (e_A, Q_A, e_S, Q_S) of pass 1's [A, S] sums, the bases canonical."""
    out = []
    for a, s in covs:
        (e_a, q_a), (e_s, q_s) = eigenbasis(a), eigenbasis(s)
        out.append((e_a, canonical(q_a), e_s, canonical(q_s)))
    return out


def fit_bases(
    tracked: TrackedModel, task: Task, data: ImageDataset, cfg: EKFACConfig, parts: list[Shard],
    progress: Progress = silent, order: torch.Tensor | None = None,
    compute: torch.dtype | None = None, reduce: Reduce = one_process,
) -> list[Basis]:
    """Pass 1 as the eigenvalue pass needs it: per layer (Q_A, Q_S, zero_a, zero_s)."""
    covs, _ = fit_covariances(tracked, task, data, cfg, parts, progress, order, compute, reduce)
    return [(q_a, q_s, e_a == 0, e_s == 0) for e_a, q_a, e_s, q_s in eigenbases(covs)]


def fit_eigenvalues(
    tracked: TrackedModel, task: Task, data: ImageDataset, cfg: EKFACConfig, parts: list[Shard],
    bases: list[Basis], progress: Progress = silent, order: torch.Tensor | None = None,
    compute: torch.dtype | None = None, reduce: Reduce = one_process,
) -> list[KroneckerFactors]:
    """Pass 2: Lambda[j, k] = E_i[R_i[j, k]^2] over the examples of `parts` (reduced over
    processes: divided by the total count); heuristic damping. Float64 factors. The bases' zero
    directions (dead coordinates, see factors.Side) are skipped, with the full basis for any
    batch that reaches them (exact)."""
    dtype = model_dtype(tracked)
    rotations = [Rotation.of(q_a, q_s, zero_a, zero_s).to(compute or dtype)
                 for q_a, q_s, zero_a, zero_s in bases]
    lams = [torch.zeros(b[1].shape[0], b[0].shape[0], dtype=torch.float64) for b in bases]
    count = torch.tensor([float(_count(parts))], dtype=torch.float64)
    done = 0
    with tracked.inputs_in(compute):
        for x, y, idx in batches(data, parts, cfg.batch_size, dtype, order):
            for pairs in pseudo_pairs(tracked, task, x, y, idx, cfg, 2, compute):
                add_eigenvalues(lams, rotations, pairs, compute)
            done += len(idx)
            progress(done, int(count), "fit eigenvalues")
    reduce([*lams, count])
    n = int(count)
    return [KroneckerFactors(q_a, q_s, lam / n, heuristic_damping(lam / n, cfg))
            for lam, (q_a, q_s, _, _) in zip(lams, bases)]


def add_eigenvalues(
    lams: list[torch.Tensor], bases: list[Rotation], pairs: Pairs,
    compute: torch.dtype | None = None,
) -> None:
    """In place: Lambda += sum_i R_i^2, R_i = Q_S^T DW_i Q_A, per layer, over the Rotation's
    directions (Lambda's skipped rows and columns stay 0). Linear: (U*U)^T (V*V) with
    U = g Q_S, V = a Q_A; conv: rotate_conv. `compute`: the dtype of the rotations (pass the
    bases in it; e.g. bfloat16), squares and sums in the model's dtype, then float64."""
    for lam, rot, (a, g) in zip(lams, bases, pairs):
        work = torch.promote_types(g.dtype, torch.float32)  # squares and sums: >= float32
        if compute is not None:
            a, g = a.to(compute), g.to(compute)
        side_a, side_s = rot.sides(a, g)
        a, g = side_a.take(a), side_s.take(g)
        if a.shape[1] == 1:
            u, v = (g[:, 0] @ side_s.q).to(work), (a[:, 0] @ side_a.q).to(work)
            block = ((u * u).T @ (v * v)).double()
        else:
            block = rotate_conv(a, g, side_a.q, side_s.q).to(work).pow(2).sum(0).double()
        if side_a is rot.full_a:
            lam += block
        else:
            lam.index_put_((side_s.dirs[:, None], side_a.dirs), block, accumulate=True)


def fit_ekfac(tracked: TrackedModel, task: Task, data: ImageDataset, cfg: EKFACConfig,
              compute: torch.dtype | None = None, progress: Progress = silent
              ) -> list[KroneckerFactors]:
    """Both passes over `data` in this process (the library's EKFAC.fit)."""
    cov_parts, cov_order = plan(len(data), cfg, covariances=True)
    bases = fit_bases(tracked, task, data, cfg, cov_parts, progress, cov_order, compute)
    parts, order = plan(len(data), cfg)
    return fit_eigenvalues(tracked, task, data, cfg, parts, bases, progress, order, compute)
