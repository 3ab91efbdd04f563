"""verify-unlearning: Newton-step unlearning against real retraining (same init and schedule).

Removal: the top `removal_fraction` most self-influential training points, plus further
removal sets (top 0.5% / 2%, random 1%) for the Pearson correlation of predicted and actual
test-loss change. Repair: every flipped label of a `noise` run set back; the retrained model is
the clean-label model with the same seed. For each, Newton step, refined Newton step and doing
nothing are compared with the retrained model: mean KL(retrained || model) of test
predictions, agreement of test predictions, test accuracy. The noise floor is two retrainings
of the same edited data with seeds 0 and 1.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .attribution import self_influence
from .config import CURVATURE_CONFIGS, artifacts_root, recipe
from .curvature import fit_curvature
from .gradients import TrackedModel
from .models import build_model
from .progress import Progress, silent
from .registry import Problem, load_problem
from .task import ClassificationTask
from .training import predict_logits, train_model
from .unlearning import newton_step, refine, updated_model

EXPERIMENTS = ("remove", "relabel")


@dataclass(frozen=True)
class VerifyConfig:
    dataset: str = "digits"
    model: str = "mlp"
    curvature: str = "ekfac"
    damping_factor: float = 100.0  # x mean eigenvalue; 0.1 (the attribution default) overshoots
    removal_fraction: float = 0.01  # the headline removal set: top 1% self-influence
    extra_sets: bool = True  # top 0.5% / 2% and random 1% removals for the Pearson
    noise: float = 0.1  # label-repair run
    refine_steps: int = 3  # local damped Newton steps (unlearning.refine)
    full_refine: bool = False  # also report full-objective refinement (a data pass per step)
    noise_floor: bool = True  # retrain the edited data with seed 1
    experiments: tuple[str, ...] = EXPERIMENTS
    latency_repeats: int = 20


def compare(model: nn.Module, retrained_logits: torch.Tensor, problem: Problem) -> dict:
    """KL(retrained || model) averaged over test points, agreement, accuracy, mean test loss."""
    logits = predict_logits(model, problem.test).double()
    ref = retrained_logits.double().log_softmax(1)
    logp = logits.log_softmax(1)
    return {
        "kl": float((ref.exp() * (ref - logp)).sum(1).mean()),
        "agreement": float((logits.argmax(1) == ref.argmax(1)).double().mean()),
        "accuracy": float((logits.argmax(1) == problem.test.labels).double().mean()),
        "test_loss": float(nn.functional.cross_entropy(logits, problem.test.labels)),
    }


def _fit(cfg: VerifyConfig, problem: Problem, progress: Progress):
    curv_cfg = CURVATURE_CONFIGS[cfg.curvature](damping_factor=cfg.damping_factor)
    return fit_curvature(cfg.curvature, TrackedModel(problem.model), ClassificationTask(),
                         problem.train, curv_cfg, progress)


def _retrain(problem: Problem, labels: torch.Tensor, keep: torch.Tensor | None, seed: int,
             progress: Progress) -> nn.Module:
    cfg = recipe(problem.config.dataset, problem.config.model, seed=seed)
    torch.manual_seed(cfg.seed)  # same initialisation as training.train_or_load
    model = build_model(cfg.model, problem.train.shape, problem.train.num_classes)
    return train_model(model, problem.train.with_labels(labels), cfg, keep, progress).eval()


def _unlearned(curv, task, problem: Problem, cfg: VerifyConfig, remove: list[int],
               relabel: dict[int, int]) -> dict[str, nn.Module]:
    wd = problem.config.weight_decay
    delta = newton_step(curv, task, problem.train, remove, relabel, weight_decay=wd)
    models = {"nothing": problem.model, "newton": updated_model(curv, delta)}
    if cfg.refine_steps:
        refined = refine(curv, task, problem.train, delta, remove, relabel, cfg.refine_steps)
        models["refined"] = updated_model(curv, refined)
    if cfg.full_refine:
        refined = refine(curv, task, problem.train, delta, remove, relabel, cfg.refine_steps,
                         mode="full", weight_decay=wd)
        models["refined_full"] = updated_model(curv, refined)
    return models


def _removal(problem: Problem, cfg: VerifyConfig, progress: Progress) -> dict:
    task, n = ClassificationTask(), len(problem.train)
    curv = _fit(cfg, problem, progress)
    order = torch.argsort(self_influence(curv, task, problem.train, progress=progress), descending=True)
    k = max(1, round(cfg.removal_fraction * n))
    sets = {"top": order[:k]}
    if cfg.extra_sets:
        rand = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        sets |= {"top_half": order[: max(1, k // 2)], "top_double": order[: 2 * k],
                 "random": rand[:k]}
    out, points = {"sets": {}}, {"predicted": [], "actual": []}
    for name, removed in sets.items():
        keep = torch.nonzero(~torch.isin(torch.arange(n), removed))[:, 0]
        retrained = _retrain(problem, problem.train.labels, keep, 0, progress)
        ref = predict_logits(retrained, problem.test)
        models = _unlearned(curv, task, problem, cfg, sorted(removed.tolist()), {})
        row = {m: compare(model, ref, problem) for m, model in models.items()}
        row["retrained"] = compare(retrained, ref, problem)
        row["size"] = len(removed)
        if name == "top" and cfg.noise_floor:
            other = _retrain(problem, problem.train.labels, keep, 1, progress)
            row["noise_floor"] = compare(other, ref, problem)
        out["sets"][name] = row
        base = row["nothing"]["test_loss"]
        points["predicted"].append(row["newton"]["test_loss"] - base)
        points["actual"].append(row["retrained"]["test_loss"] - base)
    if len(points["actual"]) > 2:
        out["pearson_test_loss_change"] = float(torch.corrcoef(torch.tensor(
            [points["predicted"], points["actual"]]))[0, 1])
    out["test_loss_change"] = points
    out["latency"] = _latency(curv, task, problem, cfg, order)
    return out


def _relabel(clean: Problem, cfg: VerifyConfig, data_root: str | None, progress: Progress) -> dict:
    task = ClassificationTask()
    noisy = load_problem(recipe(cfg.dataset, cfg.model, noise=cfg.noise), data_root,
                         progress=progress)
    curv = _fit(cfg, noisy, progress)
    flips = torch.nonzero(noisy.flip_mask)[:, 0]
    repair = {int(i): int(clean.train.labels[i]) for i in flips}
    ref = predict_logits(clean.model, clean.test)  # clean labels, same seed = retrained
    models = _unlearned(curv, task, noisy, cfg, [], repair)
    row = {m: compare(model, ref, noisy) for m, model in models.items()}
    row["retrained"] = compare(clean.model, ref, noisy)
    row["size"] = len(repair)
    if cfg.noise_floor:
        other = load_problem(recipe(cfg.dataset, cfg.model, seed=1), data_root, progress=progress)
        row["noise_floor"] = compare(other.model, ref, noisy)
    gain = row["retrained"]["accuracy"] - row["nothing"]["accuracy"]
    for m in models:
        if m != "nothing":
            row[m]["accuracy_recovered"] = (
                (row[m]["accuracy"] - row["nothing"]["accuracy"]) / gain if gain else None)
    return {"sets": {"repair_flips": row}}


def _latency(curv, task, problem: Problem, cfg: VerifyConfig, order: torch.Tensor) -> dict:
    """Median seconds of one remove / one relabel Newton step (gradient, IHVP, new model), and
    of refreshing the test predictions."""
    timings = {"remove": [], "relabel": [], "predictions": []}
    for r in range(cfg.latency_repeats):
        i = int(order[r])
        for action, kwargs in (("remove", {"remove": [i]}),
                               ("relabel", {"relabel": {i: (int(problem.train.labels[i]) + 1)
                                                        % problem.train.num_classes}})):
            start = time.perf_counter()
            updated_model(curv, newton_step(curv, task, problem.train, **kwargs))
            timings[action].append(time.perf_counter() - start)
        if r < 5:
            start = time.perf_counter()
            predict_logits(problem.model, problem.test)
            timings["predictions"].append(time.perf_counter() - start)
    return {f"{k}_median_s": statistics.median(v) for k, v in timings.items()}


def verify_unlearning(cfg: VerifyConfig, data_root: str | None = None,
                      progress: Progress = silent) -> dict:
    """Run the experiments; writes JSON under artifacts/verify/ and returns the results."""
    torch.set_grad_enabled(True)
    clean = load_problem(recipe(cfg.dataset, cfg.model), data_root, progress=progress)
    result = {"config": asdict(cfg), "num_train": len(clean.train),
              "torch_threads": torch.get_num_threads()}
    if "remove" in cfg.experiments:
        result["remove"] = _removal(clean, cfg, progress)
    if "relabel" in cfg.experiments:
        result["relabel"] = _relabel(clean, cfg, data_root, progress)
    folder = artifacts_root() / "verify"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"unlearning-{cfg.dataset}-{cfg.model}.json"
    path.write_text(json.dumps(result, indent=2))
    result["path"] = str(path)
    return result


def markdown_table(result: dict) -> str:
    """One row per (experiment, set, model): KL, agreement, accuracy, accuracy recovered."""
    lines = ["| experiment | set (size) | model | KL to retrained | agreement | test acc | "
             "acc recovered |", "|---|---|---|---|---|---|---|"]
    for exp in EXPERIMENTS:
        for name, row in result.get(exp, {}).get("sets", {}).items():
            for m in ("nothing", "newton", "refined", "refined_full", "retrained", "noise_floor"):
                if m in row:
                    r = row[m]
                    rec = r.get("accuracy_recovered")
                    lines.append(f"| {exp} | {name} ({row['size']}) | {m} | {r['kl']:.5f} | "
                                 f"{r['agreement']:.4f} | {r['accuracy']:.4f} | "
                                 f"{'' if rec is None else f'{rec:.2f}'} |")
    rem = result.get("remove", {})
    if "pearson_test_loss_change" in rem:
        lines.append(f"\nPearson(predicted, actual test-loss change) over "
                     f"{len(rem['sets'])} removal sets: {rem['pearson_test_loss_change']:.3f}")
    if "latency" in rem:
        lines.append("Latency (median s): " + ", ".join(
            f"{k} {v:.4f}" for k, v in rem["latency"].items()))
    return "\n".join(lines)
