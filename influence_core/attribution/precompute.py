"""The precompute pipeline: three passes over the training set, saved as one artifact folder.

(1) pseudo-gradients -> A, S covariances -> eigenbases; (2) pseudo-gradients -> EK-FAC Lambda;
(3) true-label gradients -> self-influence AND the index rows (fused), plus losses and logits.
Under torchrun, examples are split into shards of `shard_size` (rank r takes shards r, r + W, ...);
sums of passes 1 and 2 are all-reduced, pass 3 writes each shard's rows of shared memory-mapped
arrays. Pseudo-labels are drawn per batch from a generator seeded by the batch's first index, so
1 or W processes see the same labels and produce the same artifacts. Resuming: passes 1 and 2 are
saved as stages, pass 3 marks each finished shard; nothing finished is recomputed.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..artifacts import (
    ArtifactError,
    content_key,
    load_tensors,
    model_hash,
    open_array,
    package_versions,
    read_manifest,
    save_tensors,
    write_json,
)
from ..config import EKFACConfig, IndexConfig, artifacts_root, config_hash
from ..curvature.base import fisher_pairs, matmul_dtype, model_dtype
from ..curvature.ekfac import add_eigenvalues
from ..curvature.gradients import LAYOUT, TrackedModel, backward_pairs, forward_capture
from ..curvature.kfac import (
    CovarianceSums,
    KroneckerFactors,
    Rotation,
    eigenbasis,
    heuristic_damping,
)
from ..curvature.task import ClassificationTask
from ..data.models import channels_last
from ..data.registry import Problem
from ..progress import Progress, silent
from .index import EigenProjection, rank_one_layers


def init_distributed() -> tuple[int, int]:
    """(rank, world size); joins the torchrun group (gloo on CPU, nccl on GPU) when launched so."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(tensors: list[torch.Tensor]) -> None:
    if dist.is_initialized():
        for t in tensors:
            dist.all_reduce(t)


def barrier() -> None:
    """dist.barrier() under torchrun; nothing in one process."""
    if dist.is_initialized():
        dist.barrier()


def artifact_fields(problem: Problem, method: str, curvature: EKFACConfig, index: IndexConfig) -> dict:
    """What determines an artifact's contents (hashed into its folder name, checked on load)."""
    tracked = TrackedModel(problem.model)
    return {"dataset": problem.config.dataset, "model": problem.config.model,
            "layers": list(tracked.modules), "num_params": tracked.num_params,
            "train_config_hash": config_hash(problem.config), "model_hash": model_hash(problem.model),
            "method": method, "curvature_config": dataclasses.asdict(curvature),
            "index_config": dataclasses.asdict(index), "layout": LAYOUT}


def artifact_folder(problem: Problem, method: str = "ekfac", curvature: EKFACConfig = EKFACConfig(),
                    index: IndexConfig = IndexConfig()) -> Path:
    """artifacts/index/<dataset>-<model>-<content hash> for this problem and configs."""
    fields = artifact_fields(problem, method, curvature, index)
    name = f"{problem.config.dataset.replace(':', '_').replace('/', '_')[:40]}-{problem.config.model}"
    return artifacts_root() / "index" / f"{name}-{content_key(fields)}"


def _shards(n: int, size: int, rank: int, world: int) -> list[tuple[int, int, int]]:
    return [(s, s * size, min(n, (s + 1) * size)) for s in range(-(-n // size)) if s % world == rank]


def _batches(problem: Problem, shards: list, batch: int, dtype: torch.dtype,
             order: torch.Tensor | None = None) -> Iterator:
    """Batches of shards (s, lo, hi): positions lo..hi of `order` (None: the training set)."""
    for _, lo, hi in shards:
        for start in range(lo, hi, batch):
            idx = torch.arange(start, min(hi, start + batch))
            idx = idx if order is None else order[idx]
            yield problem.train.tensor(idx).to(dtype), problem.train.labels[idx], idx


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


def _pseudo_pairs(tracked, task, x, y, idx, cfg: EKFACConfig, what: int,
                  compute: torch.dtype | None = None) -> list:
    """The fit passes' pseudo-gradients, seeded per batch. With `compute` (bfloat16) the forward
    runs under autocast (fisher_pairs; a bf16 forward-backward is 1.5x faster here). The scoring
    pass, whose per-example gradients are the index, keeps the model's dtype."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + what * 100_003 + int(idx[0]))
    return list(fisher_pairs(tracked, task, x, y, cfg.fisher, gen, compute))


def fit_bases(problem, tracked, task, cfg, shards, progress, order=None, compute=None
              ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Pass 1: per layer (Q_A, Q_S), float64, from A = E[sum_t a a^T], S = E[sum_t g g^T], and
    which of their eigenvalues are exactly 0 (zero_a, zero_s: pass 2 skips those directions)."""
    sums = CovarianceSums(tracked, fold=0, compute=compute)  # folded per shard: W processes agree
    done, total = 0, sum(hi - lo for _, lo, hi in shards)
    for shard in shards:
        for x, y, idx in _batches(problem, [shard], cfg.batch_size, model_dtype(tracked), order):
            for draw, pairs in enumerate(_pseudo_pairs(tracked, task, x, y, idx, cfg, 1, compute)):
                sums.add(pairs, count_inputs=draw == 0)
            done += len(idx)
            progress(done, total, "1/3 fit covariances")
        sums.flush()
    covs = sums.sums()
    _all_reduce([t for c in covs for t in c])
    out = []
    for a, s in covs:
        (e_a, q_a), (e_s, q_s) = eigenbasis(a), eigenbasis(s)
        out.append((_canonical(q_a), _canonical(q_s), e_a == 0, e_s == 0))
    return out


def _canonical(q: torch.Tensor) -> torch.Tensor:
    """Eigenvectors with their largest entry positive: the same basis from 1 or W processes."""
    pick = q.abs().argmax(0)
    return q * torch.sign(q[pick, torch.arange(q.shape[1])])


def fit_eigenvalues(problem, tracked, task, cfg, shards, bases, progress, order=None,
                    compute=None) -> list[KroneckerFactors]:
    """Pass 2: Lambda[j, k] = E_i[R_i[j, k]^2], R_i = Q_S^T DW_i Q_A; heuristic damping.
    `bases`: (Q_A, Q_S, zero_a, zero_s) per layer; the zero directions (dead coordinates, see
    kfac.Side) are skipped, with the full basis for any batch that reaches them (exact)."""
    dtype = model_dtype(tracked)
    q = [Rotation.of(q_a, q_s, zero_a, zero_s).to(compute or dtype)
         for q_a, q_s, zero_a, zero_s in bases]
    lams = [torch.zeros(b[1].shape[0], b[0].shape[0], dtype=torch.float64) for b in bases]
    done, total = 0, sum(hi - lo for _, lo, hi in shards)
    for x, y, idx in _batches(problem, shards, cfg.batch_size, dtype, order):
        for pairs in _pseudo_pairs(tracked, task, x, y, idx, cfg, 2, compute):
            add_eigenvalues(lams, q, pairs, compute)
        done += len(idx)
        progress(done, total, "2/3 fit eigenvalues")
    _all_reduce(lams)
    n = len(problem.train) if order is None else len(order)
    return [KroneckerFactors(q_a, q_s, lam / n, heuristic_damping(lam / n, cfg))
            for lam, (q_a, q_s, _, _) in zip(lams, bases)]


def _open_outputs(folder: Path, n: int, n_test: int, classes: int, cfg: IndexConfig, dim: int,
                  create: bool) -> dict[str, np.memmap]:
    shapes = {"index": ((n, dim), cfg.dtype), "self_influence": ((n,), "float32"),
              "train_loss": ((n,), "float32"), "train_logits": ((n, classes), "float32"),
              "test_loss": ((n_test,), "float32"), "test_logits": ((n_test, classes), "float32")}
    return {k: open_array(folder / f"{k}.npy", s, d, create) for k, (s, d) in shapes.items()}


def score_and_index(problem, tracked, task, proj, cfg, shards, folder, out, progress,
                    compute=None) -> None:
    """Pass 3, fused: per batch one backward of the summed true-label loss, then index rows,
    self-influence, loss and logits; each finished shard is flushed and marked done."""
    todo = [s for s in shards if not (folder / "shards" / f"{s[0]}.done").is_file()]
    done, total = 0, sum(hi - lo for _, lo, hi in todo)
    for shard in todo:
        for x, y, idx in _batches(problem, [shard], cfg.batch_size, model_dtype(tracked)):
            store, logits = forward_capture(tracked, x)
            losses = task.loss(logits, y)
            pairs = backward_pairs(tracked, store, losses)
            with torch.no_grad():
                feats, self_inf = proj.project(pairs, compute)
            lo, hi = int(idx[0]), int(idx[-1]) + 1
            out["index"][lo:hi] = feats.to(getattr(torch, cfg.dtype)).numpy()  # numpy's own
            # float32 -> float16 cast is scalar: 6 s per pass over mnist, torch's 0.4 s
            out["self_influence"][lo:hi] = self_inf.numpy()
            out["train_loss"][lo:hi] = losses.detach().numpy()
            out["train_logits"][lo:hi] = logits.detach().numpy()
            done += len(idx)
            progress(done, total, "3/3 self-influence + index")
        for array in out.values():
            array.flush()
        (folder / "shards" / f"{shard[0]}.done").touch()


@torch.no_grad()
def _test_predictions(problem: Problem, task, out: dict, batch: int) -> None:
    for x, y, idx in problem.test.batches(batch):
        logits = problem.model(x.to(model_dtype(TrackedModel(problem.model))))
        out["test_logits"][int(idx[0]):int(idx[-1]) + 1] = logits.numpy()
        out["test_loss"][int(idx[0]):int(idx[-1]) + 1] = task.loss(logits, y).numpy()


def _fit_stage(problem, tracked, task, cfg, index, folder, progress, timings) -> EigenProjection:
    """Passes 1 and 2 (over fit_order's examples), or their saved results (bases.safetensors,
    factors.safetensors)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    n, compute = len(problem.train), matmul_dtype(index.matmul, model_dtype(tracked))
    order, cov_order = fit_order(n, cfg), fit_order(n, cfg, covariances=True)
    shards = _shards(n if order is None else len(order), index.shard_size, rank, world)
    cov_shards = _shards(n if cov_order is None else len(cov_order), index.shard_size, rank, world)
    if not (folder / "factors.safetensors").is_file():
        if (folder / "bases.safetensors").is_file():
            t = load_tensors(folder / "bases.safetensors")  # no zero masks: skip nothing
            bases = [(t[f"{i}.q_a"], t[f"{i}.q_s"], *(t[f"{i}.zero_{side}"].bool()
                                                       if f"{i}.zero_{side}" in t else None
                                                       for side in "as"))
                     for i in range(len(tracked.specs))]
        else:
            start = time.perf_counter()
            bases = fit_bases(problem, tracked, task, cfg, cov_shards, progress, cov_order,
                              compute)
            timings["fit_covariances"] = time.perf_counter() - start
            if rank == 0:
                save_tensors(folder / "bases.safetensors", {
                    k: v for i, (q_a, q_s, zero_a, zero_s) in enumerate(bases)
                    for k, v in ((f"{i}.q_a", q_a), (f"{i}.q_s", q_s),
                                 (f"{i}.zero_a", zero_a.to(torch.uint8)),
                                 (f"{i}.zero_s", zero_s.to(torch.uint8)))})
        start = time.perf_counter()
        factors = fit_eigenvalues(problem, tracked, task, cfg, shards, bases, progress, order,
                                  compute)
        timings["fit_eigenvalues"] = time.perf_counter() - start
        if rank == 0:
            probe = problem.train.tensor(torch.arange(min(2, len(problem.train))))
            rank_one = rank_one_layers(tracked, probe.to(model_dtype(tracked)))
            factorise = [r1 and index.factorise for r1 in rank_one]
            save_tensors(folder / "factors.safetensors",
                         EigenProjection.select(factors, index.dim, factorise, index.rank).tensors())
        barrier()
    dtype = model_dtype(tracked)
    return EigenProjection.from_tensors(load_tensors(folder / "factors.safetensors"), dtype)


def precompute(
    problem: Problem, method: str = "ekfac", curvature: EKFACConfig = EKFACConfig(),
    index: IndexConfig = IndexConfig(), progress: Progress = silent,
) -> Path:
    """Fit EK-FAC, then self-influence of every training example and the attribution index, in
    three passes; returns the artifact folder (reused as is when already complete). Under
    torchrun every rank calls this; rank 0 writes the manifest."""
    if method != "ekfac":
        raise ValueError(f"the index is built in the EK-FAC eigenbasis; method {method!r} is "
                         "unsupported (use ekfac)")
    rank, world = init_distributed()
    fields = artifact_fields(problem, method, curvature, index)
    folder = artifact_folder(problem, method, curvature, index)
    manifest = _start_manifest(folder, fields, rank)
    if manifest.get("complete"):
        return folder
    # a channels-last copy for the three passes (problem.model may serve other threads meanwhile)
    tracked = TrackedModel(channels_last(copy.deepcopy(problem.model)))
    compute = matmul_dtype(index.matmul, model_dtype(tracked))
    tracked.input_dtype = compute  # every consumer of the inputs a multiplies in `compute`
    task = ClassificationTask(index.measurement)
    manifest["matmul"] = str(compute or "model dtype")
    n, timings = len(problem.train), manifest.setdefault("timings", {})
    mine = _shards(n, index.shard_size, rank, world)
    proj = _fit_stage(problem, tracked, task, curvature, index, folder, progress, timings)
    manifest["damping"] = [f.damping for f in proj.factors]
    if rank == 0:
        write_json(folder / "manifest.json", manifest)  # keeps the fit timings across a resume
    shapes = (n, len(problem.test), problem.train.num_classes, index, proj.dim)
    if rank == 0:
        _open_outputs(folder, *shapes, create=True)
    barrier()
    out = _open_outputs(folder, *shapes, create=False)
    start = time.perf_counter()
    score_and_index(problem, tracked, task, proj, index, mine, folder, out, progress,
                    matmul_dtype(index.matmul, model_dtype(tracked)))
    timings["self_influence_and_index"] = time.perf_counter() - start
    if rank == 0:
        _test_predictions(problem, task, out, index.batch_size)
    barrier()
    if rank == 0:
        _finish_manifest(folder, manifest, n, index, world)
    barrier()
    return folder


def _start_manifest(folder: Path, fields: dict, rank: int) -> dict:
    if (folder / "manifest.json").is_file():
        manifest = read_manifest(folder)
        wrong = [k for k, v in fields.items() if manifest.get(k) != v]
        if wrong:
            raise ArtifactError(f"{folder}: manifest differs in {wrong}; delete the folder")
        return manifest
    manifest = {**fields, "complete": False, "versions": package_versions()}
    barrier()  # every rank has checked the folder before rank 0 creates it
    if rank == 0:
        (folder / "shards").mkdir(parents=True, exist_ok=True)
        write_json(folder / "manifest.json", manifest)
    barrier()
    return manifest


def _finish_manifest(folder: Path, manifest: dict, n: int, index: IndexConfig, world: int) -> None:
    missing = [s for s, _, _ in _shards(n, index.shard_size, 0, 1)
               if not (folder / "shards" / f"{s}.done").is_file()]
    if missing:
        raise ArtifactError(f"{folder}: shards {missing} unfinished; re-run precompute")
    manifest["timings"]["total"] = sum(manifest["timings"].values())
    manifest.update(complete=True, num_train=n, world_size=world,
                    peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_json(folder / "manifest.json", manifest)
