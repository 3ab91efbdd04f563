"""`bench core`: our EK-FAC fit + self-influence against Kronfluence's on the same model, data,
batch size, damping heuristic and thread count, in the same run; and the IHVP error of every
estimator against the exact damped Gauss-Newton inverse on digits/mlp. Prints a table, writes
JSON. Times are also expressed in "epochs' worth": multiples of one forward-backward pass over
the same examples at the same batch size (the three-pass floor is 3)."""

from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from .attribution import self_influence, train_gradients
from .config import EKFACConfig, ExactConfig, KFACConfig, LissaConfig, artifacts_root, recipe
from .curvature import LissaDivergedError, fit_curvature
from .datasets import ImageDataset, subset
from .evaluation import ihvp_error
from .gradients import TrackedModel, layer_grads
from .progress import Progress, silent
from .registry import Problem, load_problem
from .task import ClassificationTask


def forward_backward_epoch(model: torch.nn.Module, data: ImageDataset, batch_size: int) -> float:
    """Seconds for one forward + backward pass over `data` (the unit of "epochs' worth")."""
    tracked, task = TrackedModel(model), ClassificationTask()
    start = time.perf_counter()
    for x, y, _ in data.batches(batch_size):
        layer_grads(tracked, x, lambda out, y=y: task.loss(out, y))
    return time.perf_counter() - start


def time_ours(model: torch.nn.Module, data: ImageDataset, batch_size: int,
              progress: Progress = silent) -> dict:
    tracked, task = TrackedModel(model), ClassificationTask()
    start = time.perf_counter()
    curv = fit_curvature("ekfac", tracked, task, data, EKFACConfig(batch_size=batch_size), progress)
    fit_s = time.perf_counter() - start
    scores = self_influence(curv, task, data, batch_size, progress=progress)
    return {"fit_s": fit_s, "self_s": time.perf_counter() - start - fit_s, "scores": scores}


def time_kronfluence(model: torch.nn.Module, data: ImageDataset, batch_size: int) -> dict:
    """Kronfluence 1.0.1 EK-FAC (its defaults; heuristic damping 0.1 x mean eigenvalue)."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments

    from .baselines import _kronfluence_task, _tensor_dataset

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


def speed_table(problem: Problem, subset_size: int, batch_size: int, progress: Progress) -> dict:
    model, train = problem.model, problem.train
    epoch_full = forward_backward_epoch(model, train, batch_size)
    ours_full = time_ours(model, train, batch_size, progress)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(train), generator=gen)[:subset_size].sort().values
    small = subset(train, idx)
    epoch_small = forward_backward_epoch(model, small, batch_size)
    ours = time_ours(model, small, batch_size)
    theirs = time_kronfluence(model, small, batch_size)
    rho = float(spearmanr(ours["scores"].numpy(), theirs["scores"].numpy())[0])
    total = {k: v["fit_s"] + v["self_s"] for k, v in (("ours", ours), ("kronfluence", theirs))}
    return {
        "full": {"n": len(train), "epoch_s": epoch_full, "fit_s": ours_full["fit_s"],
                 "self_s": ours_full["self_s"],
                 "epochs_worth": (ours_full["fit_s"] + ours_full["self_s"]) / epoch_full},
        "subset": {
            "n": subset_size, "epoch_s": epoch_small,
            "ours": {"fit_s": ours["fit_s"], "self_s": ours["self_s"],
                     "epochs_worth": total["ours"] / epoch_small},
            "kronfluence": {"fit_s": theirs["fit_s"], "self_s": theirs["self_s"],
                            "epochs_worth": total["kronfluence"] / epoch_small},
            "ratio_ours_over_kronfluence": total["ours"] / total["kronfluence"],
            "spearman_self_influence": rho,
        },
    }


def ihvp_errors(problem: Problem, probes: int, lissa_depths: list[int], multipliers: list[float],
                progress: Progress) -> dict:
    """Relative IHVP error ||r - r*|| / ||r*|| against exact on training-loss gradients of
    `probes` training examples (the vectors influence uses), every estimator with the SAME
    damping: exact's default (0.1 x trace(G)/p) times each multiplier."""
    model = copy.deepcopy(problem.model).double()
    tracked, task, train = TrackedModel(model), ClassificationTask(), problem.train
    exact = fit_curvature("exact", tracked, task, train, ExactConfig(), progress)
    base = exact.damping
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[:probes]
    v = train_gradients(exact, task, train, idx)
    out = {"num_params": tracked.num_params, "probes": probes, "by_damping": {}}
    for mult in multipliers:
        exact.damping = lam = base * mult
        row = {"damping": lam}
        for method, cfg in (("ekfac", EKFACConfig(damping=lam)), ("kfac", KFACConfig(damping=lam)),
                            ("identity", None)):
            row[method] = ihvp_error(fit_curvature(method, tracked, task, train, cfg), exact, v)
        lissa = fit_curvature("lissa", tracked, task, train, LissaConfig(damping=lam, batch_size=256))
        want = exact.ihvp(v)
        row["lissa_by_depth"] = {}
        for depth in lissa_depths:
            try:
                got = lissa.ihvp(v, depth=depth)
                row["lissa_by_depth"][depth] = float((got - want).norm() / want.norm())
            except LissaDivergedError:
                row["lissa_by_depth"][depth] = float("nan")
        out["by_damping"][mult] = row
    return out


def bench_core(data_root: str | None, subset_size: int = 4096, batch_size: int = 512,
               threads: int = 2, out: str | None = None, progress: Progress = silent) -> dict:
    torch.set_num_threads(threads)
    mnist = load_problem(recipe("mnist", "cnn"), data_root, progress=progress)
    report = {"threads": threads, "batch_size": batch_size, "torch": torch.__version__,
              "mnist_cnn": speed_table(mnist, subset_size, batch_size, progress)}
    digits = load_problem(recipe("digits", "mlp"), data_root, progress=progress)
    report["digits_mlp_ihvp_error"] = ihvp_errors(digits, 16, [10, 100, 1000], [1.0, 100.0],
                                                  progress)
    path = Path(out) if out else artifacts_root() / "bench" / "core.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(format_table(report))
    print(f"wrote {path}")
    return report


def format_table(r: dict) -> str:
    m, s = r["mnist_cnn"]["full"], r["mnist_cnn"]["subset"]
    o, k = s["ours"], s["kronfluence"]
    e = r["digits_mlp_ihvp_error"]
    lines = [
        f"mnist/cnn EK-FAC, {r['threads']} threads, batch {r['batch_size']}",
        "| run | examples | fit (s) | self-influence (s) | epochs' worth |",
        "|---|---|---|---|---|",
        f"| ours | {m['n']} | {m['fit_s']:.1f} | {m['self_s']:.1f} | {m['epochs_worth']:.2f} |",
        f"| ours | {s['n']} | {o['fit_s']:.2f} | {o['self_s']:.2f} | {o['epochs_worth']:.2f} |",
        f"| Kronfluence 1.0.1 | {s['n']} | {k['fit_s']:.2f} | {k['self_s']:.2f} "
        f"| {k['epochs_worth']:.2f} |",
        f"ratio ours/Kronfluence (same {s['n']} examples): {s['ratio_ours_over_kronfluence']:.3f};"
        f" Spearman of self-influence: {s['spearman_self_influence']:.4f}",
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
