"""`bench core`: our EK-FAC fit + self-influence against Kronfluence's on the same model, data,
batch size, damping heuristic and thread count, in the same run; and the IHVP error of every
estimator against the exact damped Gauss-Newton inverse on digits/mlp (ihvp.py). Prints a
table, writes JSON. Times are also expressed in "epochs' worth": multiples of one
forward-backward pass over the same examples at the same batch size (the three-pass floor is
3)."""

from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from ..attribution.scores import self_influence
from ..config import EKFACConfig, artifacts_root, recipe
from ..curvature import fit_curvature
from ..curvature.base import matmul_dtype, model_dtype
from ..curvature.gradients import TrackedModel, layer_grads
from ..curvature.task import ClassificationTask
from ..data.datasets import ImageDataset, subset
from ..data.models import channels_last
from ..data.registry import Problem, load_problem
from ..progress import Progress, silent
from .ihvp import ihvp_errors_vs_exact


def forward_backward_epoch(model: torch.nn.Module, data: ImageDataset, batch_size: int) -> float:
    """Seconds for one forward + backward pass over `data` (the unit of "epochs' worth")."""
    tracked, task = TrackedModel(model), ClassificationTask()
    start = time.perf_counter()
    for x, y, _ in data.batches(batch_size):
        layer_grads(tracked, x, lambda out, y=y: task.loss(out, y))
    return time.perf_counter() - start


def time_ours(model: torch.nn.Module, data: ImageDataset, batch_size: int,
              progress: Progress = silent, matmul: str = "auto") -> dict:
    """Our library path: fit_curvature("ekfac") then self_influence; `matmul` as EKFACConfig's
    (auto: bfloat16 products and autocast fit passes where the CPU has bf16 units)."""
    tracked, task = TrackedModel(model), ClassificationTask()
    cfg = EKFACConfig(batch_size=batch_size, matmul=matmul)
    start = time.perf_counter()
    curv = fit_curvature("ekfac", tracked, task, data, cfg, progress)
    fit_s = time.perf_counter() - start
    scores = self_influence(curv, task, data, batch_size, progress=progress)
    return {"fit_s": fit_s, "self_s": time.perf_counter() - start - fit_s, "scores": scores,
            "matmul": str(matmul_dtype(matmul, model_dtype(tracked)) or "float32")}


def time_kronfluence(model: torch.nn.Module, data: ImageDataset, batch_size: int) -> dict:
    """Kronfluence 1.0.1 EK-FAC (its defaults; heuristic damping 0.1 x mean eigenvalue)."""
    from ..optional import require
    from .baselines import _kronfluence_task, _tensor_dataset

    analyzer_mod = require("kronfluence.analyzer", "bench core's reference run")
    arguments = require("kronfluence.arguments", "bench core's reference run")
    Analyzer, prepare_model = analyzer_mod.Analyzer, analyzer_mod.prepare_model
    FactorArguments, ScoreArguments = arguments.FactorArguments, arguments.ScoreArguments

    task = _kronfluence_task("loss")
    prepared = prepare_model(copy.deepcopy(model).eval(), task)
    ds = _tensor_dataset(data)
    with tempfile.TemporaryDirectory() as out:
        analyzer = Analyzer("bench", prepared, task, cpu=True, disable_tqdm=True, output_dir=out,
                            disable_model_save=True)
        start = time.perf_counter()
        analyzer.fit_all_factors("f", ds, per_device_batch_size=batch_size,
                                 factor_args=FactorArguments(strategy="ekfac"),
                                 overwrite_output_dir=True)
        fit_s = time.perf_counter() - start
        analyzer.compute_self_scores("s", "f", ds, per_device_train_batch_size=batch_size,
                                     score_args=ScoreArguments(damping_factor=None),
                                     overwrite_output_dir=True)
        self_s = time.perf_counter() - start - fit_s
        scores = analyzer.load_self_scores("s")["all_modules"].detach().double()
    return {"fit_s": fit_s, "self_s": self_s, "scores": scores}


def speed_table(problem: Problem, subset_size: int | None, batch_size: int,
                progress: Progress) -> dict:
    """Ours (default precision, and float32) and Kronfluence on the same examples (the whole
    training set, or a seeded subset of `subset_size`) and the same model: a channels-last copy
    (what the precompute runs; its max-pooling vectorises over channels), given to both."""
    model, data = channels_last(copy.deepcopy(problem.model)), problem.train
    if subset_size is not None and subset_size < len(data):
        gen = torch.Generator().manual_seed(0)
        data = subset(data, torch.randperm(len(data), generator=gen)[:subset_size].sort().values)
    epoch = forward_backward_epoch(model, data, batch_size)
    runs = {"ours": time_ours(model, data, batch_size, progress),
            "ours_float32": time_ours(model, data, batch_size, progress, matmul="float32"),
            "kronfluence": time_kronfluence(model, data, batch_size)}
    reference = runs["kronfluence"]["fit_s"] + runs["kronfluence"]["self_s"]
    theirs = runs["kronfluence"]["scores"].numpy()
    report = {"n": len(data), "whole_training_set": len(data) == len(problem.train),
              "epoch_s": epoch}
    for name, run in runs.items():
        total = run["fit_s"] + run["self_s"]
        report[name] = {"fit_s": run["fit_s"], "self_s": run["self_s"], "total_s": total,
                        "epochs_worth": total / epoch}
        if "matmul" in run:
            report[name]["matmul"] = run["matmul"]
        if name != "kronfluence":
            report[name]["ratio_over_kronfluence"] = total / reference
            report[name]["spearman_with_kronfluence"] = float(
                spearmanr(run["scores"].numpy(), theirs)[0])
    return report


def bench_core(data_root: str | None, subset_size: int | None = None, batch_size: int = 128,
               threads: int = 2, out: str | None = None, progress: Progress = silent) -> dict:
    torch.set_num_threads(threads)
    mnist = load_problem(recipe("mnist", "cnn"), data_root, progress=progress)
    report = {"threads": threads, "batch_size": batch_size, "torch": torch.__version__,
              "mnist_cnn": speed_table(mnist, subset_size, batch_size, progress)}
    digits = load_problem(recipe("digits", "mlp"), data_root, progress=progress)
    report["digits_mlp_ihvp_error"] = ihvp_errors_vs_exact(
        copy.deepcopy(digits.model).double(), digits.train, ("ekfac", "kfac", "identity"),
        probes=16, seed=1, multiples=(1.0, 100.0), lissa_depths=(10, 100, 1000),
        progress=progress)
    path = Path(out) if out else artifacts_root() / "bench" / "core.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(format_table(report))
    print(f"wrote {path}")
    return report


def format_table(r: dict) -> str:
    m, e = r["mnist_cnn"], r["digits_mlp_ihvp_error"]
    where = "all" if m.get("whole_training_set") else "a seeded subset of"
    rows = [("ours", m["ours"]), ("ours, float32 products", m["ours_float32"]),
            ("Kronfluence 1.0.1", m["kronfluence"])]
    lines = [
        f"mnist/cnn EK-FAC fit + self-influence on {where} {m['n']} training images, "
        f"{r['threads']} threads, batch {r['batch_size']} (one forward-backward epoch "
        f"{m['epoch_s']:.1f} s)",
        "| run | fit (s) | self-influence (s) | total (s) | epochs' worth | ours / Kronfluence "
        "| Spearman vs Kronfluence |",
        "|---|---|---|---|---|---|---|",
        *[f"| {name}{' (' + run['matmul'] + ')' if 'matmul' in run else ''} | {run['fit_s']:.1f} "
          f"| {run['self_s']:.1f} | {run['total_s']:.1f} | {run['epochs_worth']:.2f} | "
          + (f"{run['ratio_over_kronfluence']:.3f} | {run['spearman_with_kronfluence']:.4f} |"
             if "ratio_over_kronfluence" in run else "1 | 1 |")
          for name, run in rows],
        "",
        f"digits/mlp relative IHVP error vs exact ({e['num_params']} parameters, "
        f"{e['probes']} training gradients; identity's error is ~1 by construction)",
        "| damping | ekfac | kfac | identity | " + " | ".join(
            f"lissa {d}" for d in next(iter(e["by_damping"].values()))["lissa_by_depth"]) + " |",
        "|---" * (4 + len(next(iter(e["by_damping"].values()))["lissa_by_depth"])) + "|",
        *[f"| {row['damping']:.3g} (x{mult:g}) | {row['ekfac']:.3f} | {row['kfac']:.3f} | "
          f"{row['identity']:.3f} | "
          + " | ".join(f"{x:.3f}" for x in row["lissa_by_depth"].values()) + " |"
          for mult, row in e["by_damping"].items()],
    ]
    return "\n".join(lines)
