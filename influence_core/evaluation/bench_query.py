"""`bench query`: latency of index queries (test images and uploaded image files) and their
quality against uncompressed EK-FAC scores over every training example, written as JSON."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..attribution.index import (
    AttributionIndex,
    index_curvature,
    load_index,
    query_index,
    query_vector,
)
from ..attribution.precompute import artifact_folder
from ..attribution.scores import pairwise_influence
from ..config import EKFACConfig, IndexConfig
from ..data.registry import Problem


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.double().argsort().argsort().double()
    rb = b.double().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def _summary(ms: list[float]) -> dict:
    return {"median_ms": statistics.median(ms), "p95_ms": float(np.percentile(ms, 95)),
            "max_ms": max(ms), "n": len(ms)}


def _latencies(index: AttributionIndex, problem: Problem, queries: torch.Tensor,
               folder: Path) -> dict:
    for i in queries[:5].tolist():  # warm-up
        query_index(index, problem.test.tensor([i])[0], None, 10)
    test_ms, upload_ms = [], []
    for i in queries.tolist():
        start = time.perf_counter()
        query_index(index, problem.test.tensor([i])[0], int(problem.test.labels[i]), 10)
        test_ms.append(1000 * (time.perf_counter() - start))
    for n, i in enumerate(queries.tolist()):  # an upload: a file of another size and mode
        path = folder / f"upload_{n}.png"
        problem.test.image((i + 1) % len(problem.test)).convert("RGB").resize((56, 56)).save(path)
        start = time.perf_counter()
        query_index(index, problem.test.normalise(Image.open(path)), None, 10)
        upload_ms.append(1000 * (time.perf_counter() - start))
    return {"test": _summary(test_ms), "upload": _summary(upload_ms)}


def _quality(index: AttributionIndex, problem: Problem, queries: torch.Tensor,
             widths: list[int]) -> dict:
    x, y = problem.test.tensor(queries), problem.test.labels[queries]
    exact = pairwise_influence(index_curvature(index), index.task, x, y, problem.train)  # (k, N)
    qv = torch.stack([query_vector(index, x[j], y[j]) for j in range(len(queries))])  # (k, dim)
    out, eigen = {}, index.projection.eigen_dim
    for m in widths:  # a prefix of the eigen part, every factor column
        proj = index.projection.narrowed(m)
        cols = torch.cat([torch.arange(m), torch.arange(eigen, index.vectors.shape[1])])
        sub, qsub = index.vectors[:, cols].contiguous(), qv[:, cols]
        approx = proj.scores(qsub, sub)
        rho = [_spearman(approx[j], exact[j]) for j in range(len(queries))]
        ms = []
        for j in range(min(20, len(queries))):
            start = time.perf_counter()
            proj.scores(qsub[j:j + 1], sub)
            ms.append(1000 * (time.perf_counter() - start))
        out[str(m)] = {"spearman_mean": float(np.mean(rho)),
                       "spearman_median": float(np.median(rho)),
                       "spearman_min": float(np.min(rho)),
                       "product_median_ms": statistics.median(ms)}
    return out


def bench_query(problem: Problem, index_cfg: IndexConfig = IndexConfig(), queries: int = 100,
                quality: bool = True, width: int | None = None,
                curvature: EKFACConfig = EKFACConfig()) -> dict:
    """The JSON report: load time, query latency (test and upload) at `width` columns, Spearman
    against uncompressed EK-FAC for widths up to it, and the precompute manifest."""
    folder = artifact_folder(problem, "ekfac", curvature, index_cfg)
    start = time.perf_counter()
    index = load_index(folder, problem.model, width=width)
    load_s = time.perf_counter() - start
    picks = torch.randperm(len(problem.test), generator=torch.Generator().manual_seed(0))[:queries]
    with tempfile.TemporaryDirectory() as tmp:
        latency = _latencies(index, problem, picks, Path(tmp))
    eigen = index.projection.eigen_dim
    widths = [m for m in (256, 512, 1024, 2048, 4096, 8192) if m < eigen]
    report = {
        "dataset": problem.config.dataset, "model": problem.config.model, "artifact": str(folder),
        "num_train": len(problem.train), "index_dim": index.vectors.shape[1],
        "eigen_dim": eigen, "factor_dim": index.vectors.shape[1] - eigen,
        "rank": index.projection.rank,
        "index_file_bytes": (folder / "index.npy").stat().st_size, "load_seconds": load_s,
        "index_ram_bytes": index.vectors.numel() * index.vectors.element_size(),
        "latency": latency, "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "seconds_per_epoch": problem.meta.get("seconds_per_epoch"),
        "precompute": {k: index.manifest.get(k) for k in ("timings", "peak_rss_mb", "damping")},
    }
    if quality:
        report["quality"] = _quality(index, problem, picks, [*widths, eigen])
    report["derived"] = derived_figures(report)
    return report


def derived_figures(report: dict) -> dict:
    """Figures computed from the report's raw numbers, stored with it: the precompute's total
    time in epochs' worth (over the model's seconds per training epoch) and the index sizes in
    MB (10^6 bytes)."""
    out = {"index_file_mb": report["index_file_bytes"] / 1e6,
           "index_ram_mb": report["index_ram_bytes"] / 1e6}
    total = ((report.get("precompute") or {}).get("timings") or {}).get("total")
    if total and report.get("seconds_per_epoch"):
        out["precompute_epochs"] = total / report["seconds_per_epoch"]
    return out
