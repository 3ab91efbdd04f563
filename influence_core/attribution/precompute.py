"""The precompute pipeline: three passes over the training set, saved as one artifact folder.

(1) pseudo-gradients -> A, S covariances -> eigenbases; (2) pseudo-gradients -> EK-FAC Lambda
(both curvature.fit's, the library's EK-FAC fit); (3) true-label gradients -> self-influence
AND the index rows (fused), plus losses and logits. Under torchrun, examples are split into
shards of `shard_size` (rank r takes shards r, r + W, ...); sums of passes 1 and 2 are
all-reduced, pass 3 writes each shard's rows of shared memory-mapped arrays. Pseudo-labels are
drawn per batch from a generator seeded by the batch's first index, so 1 or W processes see the
same labels and produce the same artifacts. Resuming: passes 1 and 2 are saved as stages, pass 3
marks each finished shard; nothing finished is recomputed.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import resource
import time
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
from ..curvature.base import matmul_dtype, model_dtype
from ..curvature.fit import Basis, batches, fit_bases, fit_eigenvalues, fit_order, shards
from ..curvature.gradients import LAYOUT, TrackedModel, backward_pairs, forward_capture
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
    """Sums over the torchrun ranks, in place (the fit passes' Reduce)."""
    if dist.is_initialized():
        for t in tensors:
            dist.all_reduce(t)


def barrier() -> None:
    """dist.barrier() under torchrun; nothing in one process."""
    if dist.is_initialized():
        dist.barrier()


def artifact_fields(problem: Problem, method: str, curvature: EKFACConfig, index: IndexConfig
                    ) -> dict:
    """What determines an artifact's contents (hashed into its folder name, checked on load)."""
    tracked = TrackedModel(problem.model)
    return {"dataset": problem.config.dataset, "model": problem.config.model,
            "layers": list(tracked.modules), "num_params": tracked.num_params,
            "train_config_hash": config_hash(problem.config),
            "model_hash": model_hash(problem.model),
            "method": method, "curvature_config": dataclasses.asdict(curvature),
            "index_config": dataclasses.asdict(index), "layout": LAYOUT}


def artifact_folder(problem: Problem, method: str = "ekfac", curvature: EKFACConfig = EKFACConfig(),
                    index: IndexConfig = IndexConfig()) -> Path:
    """artifacts/index/<dataset>-<model>-<content hash> for this problem and configs."""
    fields = artifact_fields(problem, method, curvature, index)
    dataset = problem.config.dataset.replace(":", "_").replace("/", "_")[:40]
    name = f"{dataset}-{problem.config.model}"
    return artifacts_root() / "index" / f"{name}-{content_key(fields)}"


def _open_outputs(folder: Path, n: int, n_test: int, classes: int, cfg: IndexConfig, dim: int,
                  create: bool) -> dict[str, np.memmap]:
    shapes = {"index": ((n, dim), cfg.dtype), "self_influence": ((n,), "float32"),
              "train_loss": ((n,), "float32"), "train_logits": ((n, classes), "float32"),
              "test_loss": ((n_test,), "float32"), "test_logits": ((n_test, classes), "float32")}
    return {k: open_array(folder / f"{k}.npy", s, d, create) for k, (s, d) in shapes.items()}


def score_and_index(problem, tracked, task, proj, cfg, parts, folder, out, progress,
                    compute=None) -> None:
    """Pass 3, fused: per batch one backward of the summed true-label loss, then index rows,
    self-influence, loss and logits; each finished shard is flushed and marked done."""
    todo = [s for s in parts if not (folder / "shards" / f"{s[0]}.done").is_file()]
    done, total = 0, sum(hi - lo for _, lo, hi in todo)
    for shard in todo:
        for x, y, idx in batches(problem.train, [shard], cfg.batch_size, model_dtype(tracked)):
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
    """Passes 1 and 2 (curvature.fit over fit_order's examples, this rank's shards, all-reduced),
    or their saved results (bases.safetensors, factors.safetensors)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    n, compute = len(problem.train), matmul_dtype(index.matmul, model_dtype(tracked))
    order, cov_order = fit_order(n, cfg), fit_order(n, cfg, covariances=True)
    parts = shards(n if order is None else len(order), index.shard_size, rank, world)
    cov_parts = shards(n if cov_order is None else len(cov_order), index.shard_size, rank, world)
    if not (folder / "factors.safetensors").is_file():
        if (folder / "bases.safetensors").is_file():
            bases = _load_bases(folder, len(tracked.specs))
        else:
            start = time.perf_counter()
            bases = fit_bases(tracked, task, problem.train, cfg, cov_parts,
                              _stage(progress, "1/3"), cov_order, compute, _all_reduce)
            timings["fit_covariances"] = time.perf_counter() - start
            if rank == 0:
                _save_bases(folder, bases)
        start = time.perf_counter()
        factors = fit_eigenvalues(tracked, task, problem.train, cfg, parts, bases,
                                  _stage(progress, "2/3"), order, compute, _all_reduce)
        timings["fit_eigenvalues"] = time.perf_counter() - start
        if rank == 0:
            probe = problem.train.tensor(torch.arange(min(2, len(problem.train))))
            rank_one = rank_one_layers(tracked, probe.to(model_dtype(tracked)))
            factorise = [r1 and index.factorise for r1 in rank_one]
            kept = EigenProjection.select(factors, index.dim, factorise, index.rank)
            save_tensors(folder / "factors.safetensors", kept.tensors())
        barrier()
    dtype = model_dtype(tracked)
    return EigenProjection.from_tensors(load_tensors(folder / "factors.safetensors"), dtype)


def _stage(progress: Progress, stage: str) -> Progress:
    """`progress` with the pass's number in front of what it reports ("1/3 fit covariances")."""
    return lambda done, total, what: progress(done, total, f"{stage} {what}")


def _save_bases(folder: Path, bases: list[Basis]) -> None:
    save_tensors(folder / "bases.safetensors", {
        k: v for i, (q_a, q_s, zero_a, zero_s) in enumerate(bases)
        for k, v in ((f"{i}.q_a", q_a), (f"{i}.q_s", q_s),
                     (f"{i}.zero_a", zero_a.to(torch.uint8)),
                     (f"{i}.zero_s", zero_s.to(torch.uint8)))})


def _load_bases(folder: Path, layers: int) -> list[Basis]:
    """Pass 1's saved bases; without zero masks (older folders), pass 2 skips nothing."""
    t = load_tensors(folder / "bases.safetensors")
    return [(t[f"{i}.q_a"], t[f"{i}.q_s"], *(t[f"{i}.zero_{side}"].bool()
                                             if f"{i}.zero_{side}" in t else None
                                             for side in "as"))
            for i in range(layers)]


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
    mine = shards(n, index.shard_size, rank, world)
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
    missing = [s for s, _, _ in shards(n, index.shard_size)
               if not (folder / "shards" / f"{s}.done").is_file()]
    if missing:
        raise ArtifactError(f"{folder}: shards {missing} unfinished; re-run precompute")
    manifest["timings"]["total"] = sum(manifest["timings"].values())
    manifest.update(complete=True, num_train=n, world_size=world,
                    peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_json(folder / "manifest.json", manifest)
